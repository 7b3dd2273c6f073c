"""A machine as a person reads it: a table of ranges, the crash region, state, what was not read."""

from __future__ import annotations

from .model import Machine
from .ranges import Range, human_size

MAX_ROWS = 200


def _yesno(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _range(r: Range | None) -> str:
    return "none" if r is None else f"{r.start:#014x}-{r.last:#014x} ({human_size(r.size)})"


def format_machine(machine: Machine, *, max_rows: int = MAX_ROWS) -> str:
    lines = [f"memory ({machine.memory_source}, {len(machine.memory)} ranges):",
             f"  {'start':>14}  {'last':>14}  {'size':>10}  type"]
    for r in machine.memory[:max_rows]:
        lines.append(f"  {r.start:#014x}  {r.last:#014x}  {human_size(r.size):>10}  {'  ' * r.depth}{r.type}")
    if len(machine.memory) > max_rows:
        lines.append(f"  ... {len(machine.memory) - max_rows} more (use --json for all)")
    ram = machine.walkable_ram()
    lines.append(f"  System RAM the kexec hole finder walks: {len(ram)} ranges, "
                 f"{human_size(sum(r.size for r in ram))}")
    lines.append("crash region:")
    lines.append(f"  crashk_res      {_range(machine.crashk_res)}")
    lines.append(f"  crashk_low_res  {_range(machine.crashk_low_res)}")
    if machine.xen_crash_area is not None:
        lines.append(f"  xen crash area  {_range(machine.xen_crash_area)}")
    if machine.xen_image is not None:
        lines.append(f"  xen image       {_range(machine.xen_image)}")
    if machine.xen_vmcoreinfo is not None:
        lines.append(f"  xen vmcoreinfo  {_range(machine.xen_vmcoreinfo)}")
    for cpu, notes in enumerate(machine.xen_cpu_notes):
        lines.append(f"  xen cpu{cpu} notes {_range(notes)}")
    lines.append("kexec handover (KHO):")
    lines.append(f"  active          {_yesno(machine.kho_active)}")
    for r in machine.kho_scratch:
        lines.append(f"  scratch         {_range(r)}")
    lines.append("state:")
    rows = [("architecture", machine.arch or "unknown"), ("page size", str(machine.page_size)),
            ("kernel", machine.kernel_release or "unknown"), ("lockdown", machine.lockdown or "unknown"),
            ("kexec loaded", _yesno(machine.kexec_loaded)),
            ("crash kernel loaded", _yesno(machine.kexec_crash_loaded)),
            ("crash size", "unknown" if machine.kexec_crash_size is None
             else f"{machine.kexec_crash_size:#x} ({human_size(machine.kexec_crash_size)})"),
            ("hypervisor", machine.hypervisor or "none seen"),
            ("possible CPUs", "unknown" if machine.possible_cpus is None else str(machine.possible_cpus)),
            ("MemTotal", "unknown" if machine.mem_total is None else human_size(machine.mem_total)),
            ("EFI boot", _yesno(machine.efi))]
    for name, value in rows:
        lines.append(f"  {name:<20}{value}")
    if machine.unreadable:
        lines.append("could not read:")
        for what, why in machine.unreadable:
            lines.append(f"  {what}: {why}")
    for note in machine.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
