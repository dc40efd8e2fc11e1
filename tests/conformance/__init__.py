"""Our own OCI distribution-spec conformance workflows (pull, push, discovery, management).

Written from the spec and a checklist of what the official v1.1.1 and main-branch suites ask, run
against the in-memory trow and, with TROW_CONFORMANCE_URL set, a live registry.
"""
