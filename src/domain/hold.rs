use super::{Quantity, SkuId};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::fmt;
use uuid::Uuid;

/// The secret that signs hold ids: one per ledger, created by its
/// migrations and loaded at startup. Only ids signed with it verify, so an
/// id that was never issued cannot pass for one that was lost.
#[derive(Clone)]
pub struct HoldIdKey(Hmac<Sha256>);

impl HoldIdKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"))
    }

    /// The MAC of an id's claims (its payload without the tag).
    fn mac(&self, claims: u128) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(&claims.to_be_bytes());
        mac
    }
}

impl fmt::Debug for HoldIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HoldIdKey(..)")
    }
}

/// A hold id: a UUID (version 8) whose 122 free bits carry, from the top,
/// a serial (49 bits, unique per ledger, handed out in blocks so ids sort
/// roughly by issue), the SKU's number in the ledger (31 bits: the id alone
/// names its SKU, and so its Redis hash slot), the hold's quantity (10
/// bits) and a 32-bit tag: the first bits of an HMAC-SHA256 of the rest
/// under the ledger's [`HoldIdKey`].
///
/// There is no room for a creation time as well: with the tag, the serial
/// is what keeps ids unique, and random bits would need more room than is
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(Uuid);

impl HoldId {
    /// Bits of the serial; serials run below `1 << SERIAL_BITS`.
    pub const SERIAL_BITS: u32 = 49;
    /// Serials are handed out in blocks of `1 << BLOCK_BITS`: the serial's
    /// high bits are the block's number.
    pub const BLOCK_BITS: u32 = 20;
    const SKU_BITS: u32 = 31;
    const QUANTITY_BITS: u32 = 10;
    const TAG_BITS: u32 = 32;

    /// The id of hold number `serial` (unique per ledger) of `quantity`
    /// units of SKU number `sku_no`, signed with `key`.
    pub fn issue(key: &HoldIdKey, serial: u64, sku_no: u32, quantity: Quantity) -> Self {
        debug_assert!(
            serial < 1 << Self::SERIAL_BITS,
            "serial {serial} out of range"
        );
        debug_assert!(sku_no < 1 << Self::SKU_BITS, "sku_no {sku_no} out of range");
        let claims = (u128::from(serial) << (Self::SKU_BITS + Self::QUANTITY_BITS))
            | (u128::from(sku_no) << Self::QUANTITY_BITS)
            | u128::from(quantity.get());
        let tag = key.mac(claims).finalize().into_bytes();
        let tag = u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]);
        Self(spread((claims << Self::TAG_BITS) | u128::from(tag)))
    }

    /// The hold id `uuid` names, if it is one `key` signed: anything else
    /// names no hold, and needs no store to say so.
    pub fn verify(key: &HoldIdKey, uuid: Uuid) -> Option<Self> {
        let payload = gather(uuid)?;
        let claims = payload >> Self::TAG_BITS;
        let tag = (payload as u32).to_be_bytes();
        key.mac(claims).verify_truncated_left(&tag).ok()?;
        Some(Self(uuid))
    }

    /// A hold id as dropgate's own stores keep it (they only keep ids it
    /// issued); `None` unless a version 8 UUID.
    pub fn parse(value: &str) -> Option<Self> {
        let uuid = Uuid::try_parse(value).ok()?;
        gather(uuid).map(|_| Self(uuid))
    }

    /// A hold id read from dropgate's own stores.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    fn payload(self) -> u128 {
        gather(self.0).unwrap_or_default()
    }

    pub fn serial(self) -> u64 {
        (self.payload() >> (Self::SKU_BITS + Self::QUANTITY_BITS + Self::TAG_BITS)) as u64
    }

    /// The number of the block the serial came from.
    pub fn block(self) -> u64 {
        self.serial() >> Self::BLOCK_BITS
    }

    pub fn sku_no(self) -> u32 {
        ((self.payload() >> (Self::QUANTITY_BITS + Self::TAG_BITS)) as u32)
            & ((1 << Self::SKU_BITS) - 1)
    }

    /// Units the hold was admitted for.
    pub fn quantity(self) -> i64 {
        i64::from(((self.payload() >> Self::TAG_BITS) as u32) & ((1 << Self::QUANTITY_BITS) - 1))
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }
}

/// A 122-bit payload as a version 8 UUID: the version takes bits 76..80
/// and the variant bits 62..64 of the 128, the payload the rest, in order.
fn spread(payload: u128) -> Uuid {
    let high = payload >> 74;
    let middle = (payload >> 62) & 0xfff;
    let low = payload & ((1 << 62) - 1);
    Uuid::from_u128((high << 80) | (8 << 76) | (middle << 64) | (0b10 << 62) | low)
}

/// The payload of a version 8 UUID ([`spread`] undone).
fn gather(uuid: Uuid) -> Option<u128> {
    if uuid.get_version_num() != 8 || uuid.get_variant() != uuid::Variant::RFC4122 {
        return None;
    }
    let bits = uuid.as_u128();
    Some(((bits >> 80) << 74) | (((bits >> 64) & 0xfff) << 62) | (bits & ((1 << 62) - 1)))
}

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for HoldId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HoldId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Uuid::try_parse(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// `held` until confirmed, released, expired (its TTL passed) or lost (the
/// gate lost it before the ledger had it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Held,
    Confirmed,
    Released,
    Expired,
    Lost,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Lost => "lost",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "held" => Self::Held,
            "confirmed" => Self::Confirmed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            "lost" => Self::Lost,
            _ => return None,
        })
    }
}

/// A hold as dropgate answers about it, from whichever store knows most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub hold_id: HoldId,
    pub sku: SkuId,
    /// `None` only for a lost hold that no store kept: its customer is
    /// unknown, and dropgate does not make one up.
    pub customer_id: Option<String>,
    pub quantity: i64,
    pub state: HoldState,
    pub expires_at: time::OffsetDateTime,
    /// Times this hold was extended.
    pub extensions: i64,
    /// True once the ledger (Postgres) has the hold.
    pub durable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantity(units: i64) -> Quantity {
        Quantity::parse(units).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hold_ids_carry_their_serial_sku_and_quantity() {
        let key = HoldIdKey::new(b"ledger secret");
        let serial = (1 << HoldId::SERIAL_BITS) - 1;
        let id = HoldId::issue(&key, serial, (1 << 31) - 1, quantity(1000));
        assert_eq!(id.serial(), serial);
        assert_eq!(id.block(), serial >> HoldId::BLOCK_BITS);
        assert_eq!(id.sku_no(), (1 << 31) - 1);
        assert_eq!(id.quantity(), 1000);
        assert_eq!(id.uuid().get_version_num(), 8);
        assert_eq!(id.uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(HoldId::parse(&id.to_string()), Some(id));
        let small = HoldId::issue(&key, 3, 7, quantity(1));
        assert_eq!(
            (small.serial(), small.sku_no(), small.quantity()),
            (3, 7, 1)
        );
        assert_eq!(HoldId::parse("00000000-0000-4000-8000-000000000000"), None);
        assert_ne!(
            HoldId::issue(&key, 1, 7, quantity(1)),
            HoldId::issue(&key, 2, 7, quantity(1))
        );
    }

    #[test]
    fn only_ids_signed_with_the_key_verify() {
        let key = HoldIdKey::new(b"ledger secret");
        let id = HoldId::issue(&key, 42, 7, quantity(2));
        assert_eq!(HoldId::verify(&key, id.uuid()), Some(id));
        let other = HoldIdKey::new(b"another ledger");
        assert_eq!(HoldId::verify(&other, id.uuid()), None);
        // Every single bit flipped outside version and variant breaks it.
        for bit in (0..128).filter(|b| !(76..80).contains(b) && !(62..64).contains(b)) {
            let forged = Uuid::from_u128(id.uuid().as_u128() ^ (1 << bit));
            assert_eq!(HoldId::verify(&key, forged), None, "bit {bit}");
        }
        let not_v8 = Uuid::from_u128(id.uuid().as_u128() ^ (1 << 77));
        assert_eq!(HoldId::verify(&key, not_v8), None);
    }
}
