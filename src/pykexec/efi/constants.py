"""UEFI constants and table layouts, as the UEFI 2.10 specification names them.

Status codes (Appendix D), memory types (7.2 ``EFI_MEMORY_TYPE``), the order
of the boot- and runtime-services function pointers (4.4, 4.5), GUIDs of the
protocols and configuration tables stubs ask for, and the offsets of the
structures this emulator builds in guest memory.  Everything here is 64-bit
(x64 and AArch64 share the layouts: UINTN and pointers are 8 bytes).
"""

from __future__ import annotations

import uuid

HIGH_BIT = 1 << 63

# Appendix D: status codes.  Errors have the high bit set.
EFI_SUCCESS = 0
STATUS_NAMES = {
    0: "EFI_SUCCESS",
    HIGH_BIT | 1: "EFI_LOAD_ERROR",
    HIGH_BIT | 2: "EFI_INVALID_PARAMETER",
    HIGH_BIT | 3: "EFI_UNSUPPORTED",
    HIGH_BIT | 4: "EFI_BAD_BUFFER_SIZE",
    HIGH_BIT | 5: "EFI_BUFFER_TOO_SMALL",
    HIGH_BIT | 6: "EFI_NOT_READY",
    HIGH_BIT | 7: "EFI_DEVICE_ERROR",
    HIGH_BIT | 8: "EFI_WRITE_PROTECTED",
    HIGH_BIT | 9: "EFI_OUT_OF_RESOURCES",
    HIGH_BIT | 14: "EFI_NOT_FOUND",
    HIGH_BIT | 15: "EFI_ACCESS_DENIED",
    HIGH_BIT | 20: "EFI_ALREADY_STARTED",
    HIGH_BIT | 21: "EFI_ABORTED",
    HIGH_BIT | 26: "EFI_SECURITY_VIOLATION",
}
EFI_LOAD_ERROR = HIGH_BIT | 1
EFI_INVALID_PARAMETER = HIGH_BIT | 2
EFI_UNSUPPORTED = HIGH_BIT | 3
EFI_BUFFER_TOO_SMALL = HIGH_BIT | 5
EFI_NOT_READY = HIGH_BIT | 6
EFI_OUT_OF_RESOURCES = HIGH_BIT | 9
EFI_NOT_FOUND = HIGH_BIT | 14
EFI_ACCESS_DENIED = HIGH_BIT | 15
EFI_ALREADY_STARTED = HIGH_BIT | 20


def status_name(status: int) -> str:
    """The spec's name of a status; values without the error bit (a TPL, a count) as hex."""
    if status in STATUS_NAMES:
        return STATUS_NAMES[status]
    return f"EFI status {status:#x}" if status & HIGH_BIT else f"{status:#x}"


# 7.2 EFI_MEMORY_TYPE
MEMORY_TYPES = (
    "ReservedMemoryType", "LoaderCode", "LoaderData", "BootServicesCode", "BootServicesData",
    "RuntimeServicesCode", "RuntimeServicesData", "ConventionalMemory", "UnusableMemory",
    "ACPIReclaimMemory", "ACPIMemoryNVS", "MemoryMappedIO", "MemoryMappedIOPortSpace",
    "PalCode", "PersistentMemory", "UnacceptedMemoryType",
)
RESERVED, LOADER_CODE, LOADER_DATA, BS_CODE, BS_DATA, RT_CODE, RT_DATA, CONVENTIONAL = range(8)
MAX_MEMORY_TYPE = len(MEMORY_TYPES)
OEM_TYPES_START = 0x70000000


def memory_type_name(t: int) -> str:
    if 0 <= t < MAX_MEMORY_TYPE:
        return MEMORY_TYPES[t]
    return f"OemOrOs({t:#x})"


# 7.2 EFI_ALLOCATE_TYPE
ALLOCATE_ANY_PAGES, ALLOCATE_MAX_ADDRESS, ALLOCATE_ADDRESS = range(3)
ALLOCATE_TYPES = ("AllocateAnyPages", "AllocateMaxAddress", "AllocateAddress")

# 7.2 memory attributes
EFI_MEMORY_UC, EFI_MEMORY_WC, EFI_MEMORY_WT, EFI_MEMORY_WB = 0x1, 0x2, 0x4, 0x8
EFI_MEMORY_RUNTIME = HIGH_BIT
DESCRIPTOR_SIZE = 48            # EFI_MEMORY_DESCRIPTOR is 40 bytes; firmware pads to 48
DESCRIPTOR_VERSION = 1
PAGE = 4096

# Table signatures (4.2-4.5)
SYSTEM_TABLE_SIGNATURE = 0x5453595320494249     # "IBI SYST"
BOOT_SERVICES_SIGNATURE = 0x56524553544F4F42    # "BOOTSERV"
RUNTIME_SERVICES_SIGNATURE = 0x56524553544E5552  # "RUNTSERV"
SPEC_REVISION = (2 << 16) | 100                  # 2.10
TABLE_HEADER_SIZE = 24

# 4.3 EFI_SYSTEM_TABLE field offsets
ST_FIRMWARE_VENDOR = 24
ST_FIRMWARE_REVISION = 32
ST_CON_IN_HANDLE = 40
ST_CON_IN = 48
ST_CON_OUT_HANDLE = 56
ST_CON_OUT = 64
ST_STDERR_HANDLE = 72
ST_STDERR = 80
ST_RUNTIME_SERVICES = 88
ST_BOOT_SERVICES = 96
ST_NUMBER_OF_TABLE_ENTRIES = 104
ST_CONFIGURATION_TABLE = 112
ST_SIZE = 120

# 4.4 EFI_BOOT_SERVICES, in table order after the header
BOOT_SERVICES = (
    "RaiseTPL", "RestoreTPL", "AllocatePages", "FreePages", "GetMemoryMap", "AllocatePool",
    "FreePool", "CreateEvent", "SetTimer", "WaitForEvent", "SignalEvent", "CloseEvent",
    "CheckEvent", "InstallProtocolInterface", "ReinstallProtocolInterface",
    "UninstallProtocolInterface", "HandleProtocol", "Reserved", "RegisterProtocolNotify",
    "LocateHandle", "LocateDevicePath", "InstallConfigurationTable", "LoadImage", "StartImage",
    "Exit", "UnloadImage", "ExitBootServices", "GetNextMonotonicCount", "Stall",
    "SetWatchdogTimer", "ConnectController", "DisconnectController", "OpenProtocol",
    "CloseProtocol", "OpenProtocolInformation", "ProtocolsPerHandle", "LocateHandleBuffer",
    "LocateProtocol", "InstallMultipleProtocolInterfaces", "UninstallMultipleProtocolInterfaces",
    "CalculateCrc32", "CopyMem", "SetMem", "CreateEventEx",
)
# 4.5 EFI_RUNTIME_SERVICES
RUNTIME_SERVICES = (
    "GetTime", "SetTime", "GetWakeupTime", "SetWakeupTime", "SetVirtualAddressMap",
    "ConvertPointer", "GetVariable", "GetNextVariableName", "SetVariable",
    "GetNextHighMonotonicCount", "ResetSystem", "UpdateCapsule", "QueryCapsuleCapabilities",
    "QueryVariableInfo",
)
# 12.4 EFI_SIMPLE_TEXT_OUTPUT_PROTOCOL, then its Mode pointer
TEXT_OUTPUT = ("Reset", "OutputString", "TestString", "QueryMode", "SetMode", "SetAttribute",
               "ClearScreen", "SetCursorPosition", "EnableCursor")
# 12.3 EFI_SIMPLE_TEXT_INPUT_PROTOCOL: two functions, then the WaitForKey event
TEXT_INPUT = ("Reset", "ReadKeyStroke")

# 9.1 EFI_LOADED_IMAGE_PROTOCOL field offsets
LI_REVISION = 0
LI_PARENT_HANDLE = 8
LI_SYSTEM_TABLE = 16
LI_DEVICE_HANDLE = 24
LI_FILE_PATH = 32
LI_LOAD_OPTIONS_SIZE = 48
LI_LOAD_OPTIONS = 56
LI_IMAGE_BASE = 64
LI_IMAGE_SIZE = 72
LI_IMAGE_CODE_TYPE = 80
LI_IMAGE_DATA_TYPE = 84
LI_UNLOAD = 88
LI_SIZE = 96
LOADED_IMAGE_REVISION = 0x1000

# 7.1 events
EVT_TIMER = 0x80000000
EVT_NOTIFY_WAIT = 0x100
EVT_NOTIFY_SIGNAL = 0x200
EVT_SIGNAL_EXIT_BOOT_SERVICES = 0x201
EVT_SIGNAL_VIRTUAL_ADDRESS_CHANGE = 0x60000202
TPL_APPLICATION, TPL_CALLBACK, TPL_NOTIFY, TPL_HIGH_LEVEL = 4, 8, 16, 31

# 7.3 OpenProtocol attributes, LocateHandle search types
OPEN_BY_HANDLE_PROTOCOL, OPEN_GET_PROTOCOL, OPEN_TEST_PROTOCOL = 0x1, 0x2, 0x4
OPEN_BY_CHILD_CONTROLLER, OPEN_BY_DRIVER, OPEN_EXCLUSIVE = 0x8, 0x10, 0x20
ALL_HANDLES, BY_REGISTER_NOTIFY, BY_PROTOCOL = 0, 1, 2

# 10 device path nodes
DP_HARDWARE, DP_MEDIA, DP_END = 0x01, 0x04, 0x7F
DP_MEDIA_VENDOR = 0x03
DP_END_ENTIRE, DP_END_INSTANCE = 0xFF, 0x01

# PE machine types (the architecture LoadImage accepts)
MACHINE_X64 = 0x8664
MACHINE_AA64 = 0xAA64
MACHINE_FOR_ARCH = {"x86_64": MACHINE_X64, "arm64": MACHINE_AA64}
SUBSYSTEMS = {10: "EFI application", 11: "EFI boot service driver", 12: "EFI runtime driver"}


def guid(text: str) -> bytes:
    """The 16 bytes of a GUID as EFI stores it (mixed-endian, as ``uuid.bytes_le``)."""
    return uuid.UUID(text).bytes_le


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw)))


# Protocols
LOADED_IMAGE_PROTOCOL = guid("5b1b31a1-9562-11d2-8e3f-00a0c969723b")
LOADED_IMAGE_DEVICE_PATH_PROTOCOL = guid("bc62157e-3e33-4fec-9920-2d3b36d750df")
DEVICE_PATH_PROTOCOL = guid("09576e91-6d3f-11d2-8e39-00a0c969723b")
LOAD_FILE_PROTOCOL = guid("56ec3091-954c-11d2-8e3f-00a0c969723b")
LOAD_FILE2_PROTOCOL = guid("4006c0c1-fcb3-403e-996d-4a6c8724e06d")
SIMPLE_FILE_SYSTEM_PROTOCOL = guid("964e5b22-6459-11d2-8e39-00a0c969723b")
SIMPLE_TEXT_OUTPUT_PROTOCOL = guid("387477c2-69c7-11d2-8e39-00a0c969723b")
SIMPLE_TEXT_INPUT_PROTOCOL = guid("387477c1-69c7-11d2-8e39-00a0c969723b")
RNG_PROTOCOL = guid("3152bca5-eade-433d-862e-c01cdc291f44")
# Configuration tables
RT_PROPERTIES_TABLE = guid("eb66918a-7eef-402a-842e-931d21c38ae9")
DEVICE_TREE_TABLE = guid("b1b621d5-f19c-41a5-830b-d9152c69aae0")
EVENT_GROUP_EXIT_BOOT_SERVICES = guid("27abf055-b1b8-4c26-8048-748f37baa2df")
# Linux
LINUX_EFI_INITRD_MEDIA = guid("5568e427-68fc-4f3d-ac74-ca555231cc68")
LINUX_EFI_INITRD_MEDIA_TEXT = "5568e427-68fc-4f3d-ac74-ca555231cc68"

# Names for the trace: the GUIDs stubs are known to ask for.
GUID_NAMES = {
    LOADED_IMAGE_PROTOCOL: "LOADED_IMAGE",
    LOADED_IMAGE_DEVICE_PATH_PROTOCOL: "LOADED_IMAGE_DEVICE_PATH",
    DEVICE_PATH_PROTOCOL: "DEVICE_PATH",
    LOAD_FILE_PROTOCOL: "LOAD_FILE",
    LOAD_FILE2_PROTOCOL: "LOAD_FILE2",
    SIMPLE_FILE_SYSTEM_PROTOCOL: "SIMPLE_FILE_SYSTEM",
    SIMPLE_TEXT_OUTPUT_PROTOCOL: "SIMPLE_TEXT_OUTPUT",
    SIMPLE_TEXT_INPUT_PROTOCOL: "SIMPLE_TEXT_INPUT",
    RNG_PROTOCOL: "RNG",
    RT_PROPERTIES_TABLE: "RT_PROPERTIES_TABLE",
    DEVICE_TREE_TABLE: "DEVICE_TREE",
    LINUX_EFI_INITRD_MEDIA: "LINUX_EFI_INITRD_MEDIA",
    guid("9042a9de-23dc-4a38-96fb-7aded080516a"): "GRAPHICS_OUTPUT",
    guid("982c298b-f4fa-41cb-b838-77aa688fb839"): "UGA_DRAW",
    guid("4cf5b200-68b8-4ca5-9eec-b23e3f50029a"): "PCI_IO",
    guid("607f766c-7455-42be-930b-e4d76db2720f"): "TCG2",
    guid("f4560cf6-40ec-4b4a-a192-bf1d57d0b189"): "MEMORY_ATTRIBUTE",
    guid("91bd12fe-f6c3-44fb-a5b7-5122ab303ae0"): "APPLE_PROPERTIES",
    guid("03583ff6-cb36-4940-947e-b9b39f4afaf7"): "SMBIOS_PROTOCOL",
    guid("752f3136-4e16-4fdc-a22a-e5f46812f4ca"): "SHELL_PARAMETERS",
    guid("605dab50-e046-4300-abb6-3dd810dd8b23"): "SHIM_LOCK",
    guid("800f683f-d08b-423a-a293-965c3c6fe2b4"): "LINUX_EFI_BOOT_MEMMAP",
    guid("888eb0c6-8ede-4ff5-a8f0-9aee5cb977c2"): "LINUX_EFI_MEMRESERVE",
    guid("e03fc20a-85dc-406e-b90e-4ab502371d95"): "LINUX_EFI_SCREEN_INFO",
    guid("1ce1e5bc-7ceb-42f2-81e5-8aadf180f57b"): "LINUX_EFI_RANDOM_SEED",
    guid("b7799cb0-eca2-4943-9667-1fae07b747fa"): "LINUX_EFI_TPM_EVENT_LOG",
    guid("e565a30d-47da-4dbd-b354-9bb5c84f8be2"): "LINUX_EFI_ZBOOT_MEDIA",
    guid("f5a37b6d-3344-42a5-b6bb-978648c1890a"): "LINUX_EFI_LOADED_IMAGE_FIXED",
    guid("05ad34ba-6f02-4214-952e-4da0398e2bb9"): "DXE_SERVICES_TABLE",
    guid("eb9d2d31-2d88-11d3-9a16-0090273fc14d"): "SMBIOS_TABLE",
    guid("f2fd1544-9794-4a2c-992e-e5bbcf20e394"): "SMBIOS3_TABLE",
    guid("8be4df61-93ca-11d2-aa0d-00e098032b8c"): "EFI_GLOBAL_VARIABLE",
    guid("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"): "LOADER_ENTRY (systemd)",
}


def guid_name(raw: bytes) -> str:
    return GUID_NAMES.get(bytes(raw)) or guid_text(raw)
