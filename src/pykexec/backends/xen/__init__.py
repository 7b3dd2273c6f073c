"""Xen's kexec from dom0: the ``xen`` receiver's backend, through ``__HYPERVISOR_kexec_op``.

Under Xen, kexec belongs to the hypervisor: dom0's Linux does not load the
machine's next kernel, Xen does (xen/common/kexec.c).  A user-mode build
(:func:`pykexec.boot.xen.build_xen_load`: pykexec's purgatory, boot_params or
Multiboot info, at machine addresses) is handed over with
``KEXEC_CMD_kexec_load``; ``unload``, ``status`` and ``exec`` are
``KEXEC_CMD_kexec_unload``, ``kexec_status`` and ``KEXEC_CMD_kexec``.

* :mod:`.hypercalls` -- the ABI (one declaration per layout) and the
  :class:`~.hypercalls.Hypercalls` protocol with its privcmd implementation;
* :mod:`.backend` -- :class:`~.backend.XenBackend`, which executes a load;
* :mod:`.control` -- unload, status, exec;
* :mod:`.policy` -- one sentence per errno Xen returns;
* :mod:`.probe` -- whether this is dom0, and what Xen says about the machine
  (crash area, per-CPU notes, vmcoreinfo, machine memory map).
"""
