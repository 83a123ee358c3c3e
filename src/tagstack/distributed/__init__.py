"""Running past one machine: batch tagging and embedding on Ray (``ray_batch``)."""
