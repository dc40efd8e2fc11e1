"""Content-addressed blobs, upload files and sqlite metadata: the only code that touches the disk."""
