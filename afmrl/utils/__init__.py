"""Small shared helpers: atomic I/O and hashing (io), Ray bootstrap and timeouts (ray_utils)."""
