"""Linux as the receiver: its system calls (:mod:`.syscalls`), the two load backends
(:mod:`.file` for ``kexec_file_load``, :mod:`.user` for ``kexec_load``), unload and
exec (:mod:`.control`), and the policy that ties them together (:mod:`.policy`:
fallback, errno advice, the load lock; :mod:`.signals`: no kernel call is ever split
by a signal).

Nothing is imported here, so that the CLI can install its signal handler
(:mod:`.signals`) before ctypes or the planner load.
"""
