"""allasrun: keep Allas (Keystone v3 + Swift) credentials alive for the whole of a batch job."""

__version__ = "0.1.0"
