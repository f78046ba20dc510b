"""Database access, one module per concept. Functions take an open Session."""
