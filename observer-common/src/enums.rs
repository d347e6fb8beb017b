//! Enums whose variants index kernel tables, declared once with
//! `indexed_enum!`: the count, the list, the names and the conversions
//! follow from the declaration.
//!
//! What the kernel programs use (`COUNT`, `ALL`, `from_u8`/`from_u32`) is
//! constants and const fns without loops or panics, so the BPF they compile
//! to is what hand-written tables gave.

use core::fmt;

/// An enum whose variants are the values of a metric label and of a JSON
/// event field (README, "Metrics" and "Events"), named by [`Label::name`].
pub trait Label: Copy + 'static {
    /// The label's key, e.g. `path`.
    const KEY: &'static str;
    /// Every value, in table order.
    const VALUES: &'static [Self];
    /// The value's name.
    fn name(self) -> &'static str;
    /// `(key, name)`, a metric label pair.
    fn label(self) -> (&'static str, &'static str) {
        (Self::KEY, self.name())
    }
}

/// A string that names no value of a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// The label's key.
    pub key: &'static str,
    /// The names it has.
    pub names: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {}, expected one of: ", self.key)?;
        for (i, name) in self.names.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name}")?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownName {}

/// A number that is no variant's discriminant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue(pub u32);

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown value {}", self.0)
    }
}

impl core::error::Error for UnknownValue {}

/// Byte equality of two strings, usable in const fns.
pub(crate) const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares a `#[repr(u8)]` or `#[repr(u32)]` enum whose discriminants
/// are `0..COUNT` in declaration order (checked at compile time), so a
/// variant is its index in the kernel's tables. It gets `COUNT`, `ALL`,
/// `from_u8`/`from_u32` (by its repr) and `TryFrom`.
///
/// With `, label "key"` after the repr and `=> "name"` after each
/// discriminant it is a [`Label`] too: `name()`, `from_name()`,
/// `FromStr` and `Display`.
macro_rules! indexed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident, label $key:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $disc:literal => $label:literal ),+ $(,)?
        }
    ) => {
        indexed_enum! {
            $(#[$meta])*
            $vis enum $name : $repr {
                $( $(#[$vmeta])* $variant = $disc ),+
            }
        }

        impl $name {
            /// The names, in table order.
            pub const NAMES: [&'static str; Self::COUNT] = [$( $label ),+];

            #[doc = concat!("The `", $key, "` label value.")]
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )+
                }
            }

            #[doc = concat!("Parses a `", $key, "` label value.")]
            pub const fn from_name(name: &str) -> Option<Self> {
                let mut i = 0;
                while i < Self::COUNT {
                    if $crate::enums::str_eq(Self::ALL[i].name(), name) {
                        return Some(Self::ALL[i]);
                    }
                    i += 1;
                }
                None
            }
        }

        impl $crate::enums::Label for $name {
            const KEY: &'static str = $key;
            const VALUES: &'static [Self] = &Self::ALL;
            fn name(self) -> &'static str {
                $name::name(self)
            }
        }

        impl core::str::FromStr for $name {
            type Err = $crate::enums::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_name(s).ok_or($crate::enums::UnknownName {
                    key: $key,
                    names: &Self::NAMES,
                })
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };

    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $disc:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $disc, )+
        }

        impl $name {
            /// Number of variants: the size of every table indexed by this enum.
            pub const COUNT: usize = [$( Self::$variant ),+].len();

            /// Every variant, in table order.
            pub const ALL: [Self; Self::COUNT] = [$( Self::$variant ),+];
        }

        // The discriminants are the table indexes.
        const _: () = {
            let mut i = 0;
            while i < $name::COUNT {
                assert!($name::ALL[i] as usize == i);
                i += 1;
            }
        };

        indexed_enum!(@from $repr, $name, $( $disc => $variant ),+);
    };

    // The numeric conversion is named after the repr, as `u8::from` is.
    (@from u8, $($rest:tt)+) => { indexed_enum!(@from_fn from_u8, u8, $($rest)+); };
    (@from u32, $($rest:tt)+) => { indexed_enum!(@from_fn from_u32, u32, $($rest)+); };
    (@from_fn $from:ident, $repr:ident, $name:ident, $( $disc:literal => $variant:ident ),+) => {
        impl $name {
            /// The variant whose discriminant (table index) is `v`.
            // A match, not `ALL[v]`: it compiles to compares, not a load
            // from the kernel object's read-only data.
            #[inline(always)]
            pub const fn $from(v: $repr) -> Option<Self> {
                match v {
                    $( $disc => Some(Self::$variant), )+
                    _ => None,
                }
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $crate::enums::UnknownValue;
            fn try_from(v: $repr) -> Result<Self, Self::Error> {
                Self::$from(v).ok_or($crate::enums::UnknownValue(u32::from(v)))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::ToString, vec::Vec};

    use super::*;
    use crate::{
        counters::{Direction, DropReason, Stat},
        path::Path,
        policy::{Action, Verdict},
        protocol::Protocol,
    };

    /// Names are unique within a label and round-trip through `from_name`,
    /// `FromStr` and `Display`; `VALUES` is `ALL`.
    fn names_round_trip<T>()
    where
        T: Label + PartialEq + core::fmt::Debug + core::str::FromStr + fmt::Display,
        T::Err: fmt::Debug,
    {
        let names: Vec<&str> = T::VALUES.iter().map(|v| v.name()).collect();
        for (i, v) in T::VALUES.iter().enumerate() {
            assert!(!names[..i].contains(&v.name()), "{} twice", v.name());
            assert_eq!(v.name().parse::<T>().unwrap(), *v);
            assert_eq!(v.to_string(), v.name());
            assert_eq!(v.label(), (T::KEY, v.name()));
        }
        assert!("".parse::<T>().is_err());
        assert!("banana".parse::<T>().is_err());
    }

    /// `ALL[i]` has discriminant `i`, and the numeric conversions give it
    /// back; one past the end is no variant.
    macro_rules! indexes_round_trip {
        ($($t:ty : $repr:ty),+ $(,)?) => {$(
            for (i, v) in <$t>::ALL.into_iter().enumerate() {
                assert_eq!(v as usize, i);
                assert_eq!(<$t>::try_from(i as $repr), Ok(v));
            }
            assert_eq!(
                <$t>::try_from(<$t>::COUNT as $repr),
                Err(UnknownValue(<$t>::COUNT as u32))
            );
        )+};
    }

    #[test]
    fn tables_are_consistent() {
        indexes_round_trip!(
            Path: u8,
            Protocol: u8,
            Verdict: u8,
            Direction: u8,
            Action: u32,
            Stat: u32,
            DropReason: u32,
        );
        names_round_trip::<Path>();
        names_round_trip::<Protocol>();
        names_round_trip::<Verdict>();
        names_round_trip::<Direction>();
        names_round_trip::<Action>();
        names_round_trip::<DropReason>();
        assert_eq!(Path::from_u8(Path::COUNT as u8), None);
        assert_eq!(Action::from_u32(u32::MAX), None);
        assert_eq!(
            "ftp".parse::<Protocol>().unwrap_err().to_string(),
            "unknown protocol, expected one of: tls, http, http2, ssh, other, none"
        );
    }
}
