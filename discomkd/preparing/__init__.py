"""Raw sample files (image folders or a CSV manifest) turned into a data folder."""
