//! Memory attributes: the MAIR_EL1 indices (`MT_*`) and attribute bytes Linux programs.

/// AttrIndx of Normal write-back memory. Linux: index 0 so that `MT_NORMAL_TAGGED` can be or'ed in.
pub const MT_NORMAL: u64 = 0;
/// Normal, tagged (MTE). Mapped as plain Normal in MAIR until MTE is enabled.
pub const MT_NORMAL_TAGGED: u64 = 1;
/// Normal non-cacheable.
pub const MT_NORMAL_NC: u64 = 2;
/// Device-nGnRnE.
#[allow(non_upper_case_globals)]
pub const MT_DEVICE_nGnRnE: u64 = 3;
/// Device-nGnRE (ioremap default).
#[allow(non_upper_case_globals)]
pub const MT_DEVICE_nGnRE: u64 = 4;

/// MAIR attribute byte: Device-nGnRnE.
#[allow(non_upper_case_globals)]
pub const MAIR_ATTR_DEVICE_nGnRnE: u64 = 0x00;
/// MAIR attribute byte: Device-nGnRE.
#[allow(non_upper_case_globals)]
pub const MAIR_ATTR_DEVICE_nGnRE: u64 = 0x04;
/// MAIR attribute byte: Normal inner/outer non-cacheable.
pub const MAIR_ATTR_NORMAL_NC: u64 = 0x44;
/// MAIR attribute byte: Normal inner/outer write-back, read/write-allocate, non-transient.
pub const MAIR_ATTR_NORMAL: u64 = 0xff;
/// MAIR attribute byte: Normal tagged (only with FEAT_MTE2; Linux switches index 1 to this).
pub const MAIR_ATTR_NORMAL_TAGGED: u64 = 0xf0;

/// Place a MAIR attribute byte at an index (Linux `MAIR_ATTRIDX`).
pub const fn mair_attridx(attr: u64, idx: u64) -> u64 {
    attr << (idx * 8)
}

/// The MAIR_EL1 value Linux programs in `__cpu_setup` (`MAIR_EL1_SET` in arch/arm64/mm/proc.S):
/// idx0 Normal WB (0xff), idx1 Normal (tagged later, 0xff), idx2 Normal-NC (0x44),
/// idx3 Device-nGnRnE (0x00), idx4 Device-nGnRE (0x04) = `0x0000_0004_0044_ffff`.
pub const MAIR_EL1_SET: u64 = mair_attridx(MAIR_ATTR_DEVICE_nGnRnE, MT_DEVICE_nGnRnE)
    | mair_attridx(MAIR_ATTR_DEVICE_nGnRE, MT_DEVICE_nGnRE)
    | mair_attridx(MAIR_ATTR_NORMAL_NC, MT_NORMAL_NC)
    | mair_attridx(MAIR_ATTR_NORMAL, MT_NORMAL)
    | mair_attridx(MAIR_ATTR_NORMAL, MT_NORMAL_TAGGED);
