//! Physical and virtual addresses as distinct types, from one macro (as Theseus's
//! `memory_structs`): a `PhysAddr` cannot be passed where a `VirtAddr` is expected.
//!
//! They are `#[repr(transparent)]` over `u64`, so they cost nothing; the page-table and KVA
//! crates' inner arithmetic stays in `u64` (Linux's `unsigned long`), and these types mark the
//! boundaries where an address changes meaning (the linear map, a page-table walk's result).

use core::fmt;
use core::ops::{Add, Sub};

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Rounded down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                debug_assert!(align.is_power_of_two());
                $name(self.0 & !(align - 1))
            }
            /// Rounded up to a multiple of `align` (a power of two); `None` on overflow.
            pub const fn checked_align_up(self, align: u64) -> Option<Self> {
                debug_assert!(align.is_power_of_two());
                match self.0.checked_add(align - 1) {
                    Some(v) => Some($name(v & !(align - 1))),
                    None => None,
                }
            }
            /// Whether it is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// The page frame number (address >> PAGE_SHIFT).
            pub const fn pfn(self) -> crate::Pfn {
                self.0 >> crate::PAGE_SHIFT
            }
        }

        impl Add<u64> for $name {
            type Output = $name;
            fn add(self, rhs: u64) -> $name {
                $name(self.0 + rhs)
            }
        }

        impl Sub<u64> for $name {
            type Output = $name;
            fn sub(self, rhs: u64) -> $name {
                $name(self.0 - rhs)
            }
        }

        impl Sub<$name> for $name {
            type Output = u64;
            fn sub(self, rhs: $name) -> u64 {
                self.0 - rhs.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A physical (output) address.
    PhysAddr
);
address_type!(
    /// A kernel virtual address.
    VirtAddr
);

impl PhysAddr {
    /// The address of page frame `pfn`.
    pub const fn from_pfn(pfn: crate::Pfn) -> Self {
        PhysAddr(pfn << crate::PAGE_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_pfn() {
        let a = PhysAddr(0x4020_1234);
        assert_eq!(a.align_down(0x1000), PhysAddr(0x4020_1000));
        assert_eq!(a.checked_align_up(0x20_0000), Some(PhysAddr(0x4040_0000)));
        assert_eq!(PhysAddr(u64::MAX).checked_align_up(0x1000), None);
        assert!(PhysAddr(0x4020_0000).is_aligned(0x20_0000));
        assert_eq!(a.pfn(), 0x40201);
        assert_eq!(PhysAddr::from_pfn(0x40201), PhysAddr(0x4020_1000));
        assert_eq!(VirtAddr(0x3000) - VirtAddr(0x1000), 0x2000);
        assert_eq!(format!("{:?}", VirtAddr(0x10)), "VirtAddr(0x10)");
    }
}
