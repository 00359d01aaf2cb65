//! SRTP for the direct send path (see `direct`): each viewer's SRTP master key, taken from
//! str0m's own DTLS as it exports it, and AEAD-AES-GCM protection of RTP (RFC 7714).
//!
//! str0m owns the DTLS handshake and its SRTP contexts are private. It does take a pluggable
//! crypto provider, so viewers are built with one whose DTLS is str0m's usual one, wrapped:
//! the wrapper passes everything through and keeps a copy of the keying material when the
//! handshake exports it. From that, the session keys are derived exactly as str0m derives
//! them (RFC 3711 §4.3 key derivation), so packets we protect and packets str0m protects are
//! one SRTP stream to the peer.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::config::CryptoProvider;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{AeadAes128GcmCipher, AeadAes256GcmCipher, CryptoError, SrtpProvider};
use str0m::{Rtc, RtcConfig};

/// What a session's DTLS handshake exported for SRTP.
#[derive(Debug)]
pub struct Keying {
    material: Vec<u8>,
    pub profile: SrtpProfile,
    /// We were the DTLS client: our keys are the first (client) half of the material.
    active: bool,
}

/// Filled once, when the session's DTLS handshake completes.
pub type KeySlot = Arc<OnceLock<Keying>>;

thread_local! {
    /// The slot of the DTLS instance last created on this thread (`Rtc` creation is
    /// synchronous: see `build`).
    static CREATED: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Build an `Rtc` whose DTLS hands us its SRTP keying material when the handshake is done.
pub fn build(cfg: RtcConfig, now: Instant) -> (Rtc, Option<KeySlot>) {
    CREATED.with(|c| c.borrow_mut().take());
    let rtc = cfg.set_crypto_provider(provider()).build(now);
    (rtc, CREATED.with(|c| c.borrow_mut().take()))
}

/// str0m's default crypto, with the DTLS provider wrapped.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static TAP: OnceLock<Tap> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let tap = TAP.get_or_init(|| Tap(base.dtls_provider));
            Arc::new(CryptoProvider {
                dtls_provider: tap,
                ..base
            })
        })
        .clone()
}

/// The SRTP primitives (key derivation, ciphers) of str0m's crypto backend.
fn srtp_provider() -> &'static dyn SrtpProvider {
    provider().srtp_provider
}

#[derive(Debug)]
struct Tap(&'static dyn DtlsProvider);

impl DtlsProvider for Tap {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.0.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.0.new_dtls(cert, now, version, mtu)?;
        let slot = KeySlot::default();
        CREATED.with(|c| *c.borrow_mut() = Some(slot.clone()));
        Ok(Box::new(Tapped { inner, slot }))
    }
}

#[derive(Debug)]
struct Tapped {
    inner: Box<dyn DtlsInstance>,
    slot: KeySlot,
}

impl DtlsInstance for Tapped {
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(km, profile) = &out {
            let _ = self.slot.set(Keying {
                material: km[..].to_vec(),
                profile: *profile,
                active: self.inner.is_active(),
            });
        }
        out
    }

    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

/// The GCM authentication tag every SRTP packet ends with.
pub const TAG_LEN: usize = 16;

/// RFC 3711 §4.3.1 key derivation labels.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_SALT: u8 = 2;

/// Protects outgoing RTP with an AEAD-AES-GCM profile (RFC 7714 §8).
pub struct RtpProtector {
    salt: [u8; 12],
    cipher: Cipher,
}

enum Cipher {
    Aes128(Box<dyn AeadAes128GcmCipher>),
    Aes256(Box<dyn AeadAes256GcmCipher>),
}

impl RtpProtector {
    /// Our sending side of `k`; `None` for AES-CM + HMAC-SHA1, which stays with str0m.
    pub fn new(k: &Keying) -> Option<Self> {
        let srtp = srtp_provider();
        let (salt, cipher) = match k.profile {
            SrtpProfile::AEAD_AES_128_GCM => {
                let (key, salt) = session_keys::<16>(k)?;
                let cipher = srtp.aead_aes_128_gcm().create_cipher(key, true);
                (salt, Cipher::Aes128(cipher))
            }
            SrtpProfile::AEAD_AES_256_GCM => {
                let (key, salt) = session_keys::<32>(k)?;
                let cipher = srtp.aead_aes_256_gcm().create_cipher(key, true);
                (salt, Cipher::Aes256(cipher))
            }
            _ => return None,
        };
        Some(RtpProtector { salt, cipher })
    }

    /// `packet` starts with an RTP header of `header_len` bytes (the additional authenticated
    /// data) and has room for `payload` and the tag after it: those are written there,
    /// encrypted. `index` is the packet's SRTP index (roll-over counter and sequence number).
    pub fn protect(&mut self, packet: &mut [u8], header_len: usize, payload: &[u8], index: u64) {
        let iv = rtp_nonce(&self.salt, packet, index);
        let (header, body) = packet.split_at_mut(header_len);
        let body = &mut body[..payload.len() + TAG_LEN];
        let r = match &mut self.cipher {
            Cipher::Aes128(c) => c.encrypt(&iv, header, payload, body),
            Cipher::Aes256(c) => c.encrypt(&iv, header, payload, body),
        };
        // Only a nonce of the wrong length fails, and ours is built above.
        r.expect("AES-GCM takes a 12-byte nonce");
    }
}

#[cfg(test)]
impl RtpProtector {
    /// AEAD_AES_128_GCM with the given session key and salt (no key derivation).
    pub fn aes_128_gcm(key: [u8; 16], salt: [u8; 12]) -> Self {
        let cipher = srtp_provider().aead_aes_128_gcm().create_cipher(key, true);
        RtpProtector {
            salt,
            cipher: Cipher::Aes128(cipher),
        }
    }
}

/// Undo `RtpProtector::protect` (AEAD_AES_128_GCM): the payload of `packet`, or `None` if it
/// does not authenticate.
#[cfg(test)]
pub fn unprotect_aes_128_gcm(
    key: [u8; 16],
    salt: [u8; 12],
    packet: &[u8],
    header_len: usize,
    index: u64,
) -> Option<Vec<u8>> {
    let iv = rtp_nonce(&salt, packet, index);
    let mut cipher = srtp_provider().aead_aes_128_gcm().create_cipher(key, false);
    let (header, body) = packet.split_at(header_len);
    let mut out = vec![0u8; body.len()];
    let n = cipher.decrypt(&iv, &[header], body, &mut out).ok()?;
    out.truncate(n);
    Some(out)
}

/// The GCM nonce of an RTP packet (RFC 7714 §8.1): its SSRC, roll-over counter and sequence
/// number (the 48-bit SRTP `index`), XORed with the session salt.
fn rtp_nonce(salt: &[u8; 12], packet: &[u8], index: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&packet[8..12]);
    iv[6..10].copy_from_slice(&((index >> 16) as u32).to_be_bytes());
    iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// Our RTP session key and salt: derived from our half of the DTLS export.
fn session_keys<const KEY: usize>(k: &Keying) -> Option<([u8; KEY], [u8; 12])> {
    let (master, master_salt) = split::<KEY>(k)?;
    let key = derive(&master, &master_salt, LABEL_RTP_KEY);
    Some((key, derive(&master, &master_salt, LABEL_RTP_SALT)))
}

/// Our master key and 12-byte master salt from the DTLS export, laid out as
/// client key, server key, client salt, server salt (RFC 5764 §4.2).
fn split<const KEY: usize>(k: &Keying) -> Option<([u8; KEY], [u8; 12])> {
    let m = &k.material;
    if m.len() != 2 * KEY + 2 * 12 {
        return None;
    }
    let (key_at, salt_at) = if k.active {
        (0, 2 * KEY)
    } else {
        (KEY, 2 * KEY + 12)
    };
    let key = m[key_at..key_at + KEY].try_into().ok()?;
    let salt = m[salt_at..salt_at + 12].try_into().ok()?;
    Some((key, salt))
}

/// RFC 3711 §4.3.1/§4.3.3 (AES-256 per RFC 6188): AES in counter mode over
/// `master_salt ⊕ (label << 48)`, as much output as asked for.
fn derive<const KEY: usize, const OUT: usize>(
    master: &[u8; KEY],
    master_salt: &[u8],
    label: u8,
) -> [u8; OUT] {
    let srtp = srtp_provider();
    let mut input = [0u8; 16];
    input[..master_salt.len()].copy_from_slice(master_salt);
    input[7] ^= label;
    let mut out = [0u8; OUT];
    let mut block = [0u8; 32];
    for (round, chunk) in out.chunks_mut(16).enumerate() {
        input[14..].copy_from_slice(&(round as u16).to_be_bytes());
        match KEY {
            16 => srtp.srtp_aes_128_ecb_round(master, &input, &mut block),
            _ => srtp.srtp_aes_256_ecb_round(master, &input, &mut block),
        }
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_derivation_matches_rfc_3711_b3() {
        let master = [
            0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE,
            0x41, 0x39,
        ];
        let salt = [
            0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A, 0xAB, 0xE6,
        ];
        let key: [u8; 16] = derive(&master, &salt, LABEL_RTP_KEY);
        assert_eq!(
            key,
            [
                0xC6, 0x1E, 0x7A, 0x93, 0x74, 0x4F, 0x39, 0xEE, 0x10, 0x73, 0x4A, 0xFE, 0x3F, 0xF7,
                0xA0, 0x87
            ]
        );
        let session_salt: [u8; 14] = derive(&master, &salt, LABEL_RTP_SALT);
        assert_eq!(
            session_salt,
            [0x30, 0xCB, 0xBC, 0x08, 0x86, 0x3D, 0x8C, 0x85, 0xD4, 0x9D, 0xB3, 0x4A, 0x9A, 0xE1]
        );
    }

    /// RFC 7714 §16.1.1: AEAD_AES_128_GCM protection of an RTP packet.
    #[test]
    fn protection_matches_rfc_7714() {
        let key = [
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0x0e, 0x0f,
        ];
        let salt = [
            0x51, 0x75, 0x69, 0x64, 0x20, 0x70, 0x72, 0x6f, 0x20, 0x71, 0x75, 0x6f,
        ];
        let plain: &[u8] = &[
            0x80, 0x40, 0xf1, 0x7b, 0x80, 0x41, 0xf8, 0xd3, 0x55, 0x01, 0xa0, 0xb2, 0x47, 0x61,
            0x6c, 0x6c, 0x69, 0x61, 0x20, 0x65, 0x73, 0x74, 0x20, 0x6f, 0x6d, 0x6e, 0x69, 0x73,
            0x20, 0x64, 0x69, 0x76, 0x69, 0x73, 0x61, 0x20, 0x69, 0x6e, 0x20, 0x70, 0x61, 0x72,
            0x74, 0x65, 0x73, 0x20, 0x74, 0x72, 0x65, 0x73,
        ];
        let protected: &[u8] = &[
            0x80, 0x40, 0xf1, 0x7b, 0x80, 0x41, 0xf8, 0xd3, 0x55, 0x01, 0xa0, 0xb2, 0xf2, 0x4d,
            0xe3, 0xa3, 0xfb, 0x34, 0xde, 0x6c, 0xac, 0xba, 0x86, 0x1c, 0x9d, 0x7e, 0x4b, 0xca,
            0xbe, 0x63, 0x3b, 0xd5, 0x0d, 0x29, 0x4e, 0x6f, 0x42, 0xa5, 0xf4, 0x7a, 0x51, 0xc7,
            0xd1, 0x9b, 0x36, 0xde, 0x3a, 0xdf, 0x88, 0x33, 0x89, 0x9d, 0x7f, 0x27, 0xbe, 0xb1,
            0x6a, 0x91, 0x52, 0xcf, 0x76, 0x5e, 0xe4, 0x39, 0x0c, 0xce,
        ];
        let mut p = RtpProtector::aes_128_gcm(key, salt);
        let mut out = vec![0u8; plain.len() + TAG_LEN];
        out[..12].copy_from_slice(&plain[..12]);
        p.protect(&mut out, 12, &plain[12..], 0xf17b);
        assert_eq!(out, protected);
        let payload = unprotect_aes_128_gcm(key, salt, &out, 12, 0xf17b);
        assert_eq!(payload.as_deref(), Some(&plain[12..]));
        // The roll-over counter is part of the nonce: the same packet one wrap later differs.
        p.protect(&mut out, 12, &plain[12..], 0x1_f17b);
        assert_ne!(out, protected);
    }

    #[test]
    fn our_half_of_the_keying_material_follows_the_dtls_role() {
        let material: Vec<u8> = (0..88).collect(); // AES-256: 2 × 32 key + 2 × 12 salt
        let mut k = Keying {
            material,
            profile: SrtpProfile::AEAD_AES_256_GCM,
            active: true,
        };
        let (key, salt) = split::<32>(&k).unwrap();
        assert_eq!((key[0], salt[0]), (0, 64));
        k.active = false;
        let (key, salt) = split::<32>(&k).unwrap();
        assert_eq!((key[0], salt[0]), (32, 76));
        assert!(split::<16>(&k).is_none(), "AES-128 material is 56 bytes");
        k.profile = SrtpProfile::AES128_CM_SHA1_80;
        assert!(RtpProtector::new(&k).is_none());
    }
}
