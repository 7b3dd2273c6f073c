"""Backends: the only code that makes kexec system calls.

Everything above this package builds plans and byte buffers; a backend hands
them to a receiver (the Linux kernel today).  Each backend sits behind a
small protocol so tests use a recording fake instead of the real calls.
"""
