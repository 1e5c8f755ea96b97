use super::SkuId;
use serde::Serialize;
use std::fmt;
use uuid::Uuid;

/// A hold id. A UUID (version 8) whose first 48 bits are the creation time
/// in unix ms and whose last 32 bits are the SKU's number in the ledger, so
/// the id alone says which SKU, and so which Redis hash slot, owns the hold,
/// and whether it was issued before the gate's current epoch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(Uuid);

impl HoldId {
    /// A hold id minted at `created_ms` for SKU number `sku_no`; `entropy`
    /// (random bytes from the caller) fills the rest.
    pub fn new(sku_no: u32, created_ms: i64, entropy: [u8; 16]) -> Self {
        let mut bytes = entropy;
        let ms = u64::try_from(created_ms).unwrap_or(0).to_be_bytes();
        bytes[..6].copy_from_slice(&ms[2..]);
        bytes[12..].copy_from_slice(&sku_no.to_be_bytes());
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub fn parse(value: &str) -> Option<Self> {
        let uuid = Uuid::try_parse(value).ok()?;
        (uuid.get_version_num() == 8).then_some(Self(uuid))
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn sku_no(self) -> u32 {
        let b = self.0.as_bytes();
        u32::from_be_bytes([b[12], b[13], b[14], b[15]])
    }

    pub fn created_ms(self) -> i64 {
        let b = self.0.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&b[..6]);
        i64::from_be_bytes(ms)
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }
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
    pub customer_id: String,
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

    #[test]
    fn hold_ids_carry_their_sku_and_time() {
        let id = HoldId::new(4_000_000_007, 1_795_000_000_123, [7; 16]);
        assert_eq!(id.sku_no(), 4_000_000_007);
        assert_eq!(id.created_ms(), 1_795_000_000_123);
        assert_eq!(HoldId::parse(&id.to_string()), Some(id));
        assert_eq!(HoldId::parse("00000000-0000-4000-8000-000000000000"), None);
        assert_ne!(HoldId::new(1, 5, [1; 16]), HoldId::new(1, 5, [2; 16]));
    }
}
