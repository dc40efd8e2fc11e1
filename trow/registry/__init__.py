"""The OCI domain: names, digests, manifests, uploads, tags and referrers. Knows no HTTP or disk."""
