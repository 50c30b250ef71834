"""Small helpers: atomic writes, image files."""
