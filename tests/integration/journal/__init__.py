"""The hash-chained journal, its formats, tamper evidence and the audit views."""
