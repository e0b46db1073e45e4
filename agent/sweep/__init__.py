"""`promptclimb sweep`: a grid of ordinary searches run as Ray tasks, and its report."""
