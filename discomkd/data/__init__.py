"""A data folder read and checked, its splits, batches on the device, augmentation, and the embedded example."""
