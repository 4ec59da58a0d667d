"""What every part uses: the errors and exit statuses, what commands print, atomic file writes, seeds."""
