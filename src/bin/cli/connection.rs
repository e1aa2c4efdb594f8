//! A logged-in connection with the profile's pins: connecting and logging
//! in, trust on first use and key-change warnings, and how messages and
//! notices are shown.

use e2ee_chat::client::display::escape;
use e2ee_chat::client::{Client, Identity, Notice};
use e2ee_chat::crypto::{fingerprint_display, KeyPair};
use e2ee_chat::protocol::{MessageData, RoomSummary};

use crate::profile::{CliResult, Pin, Pins, Profile};
use crate::DEFAULT_SERVER;

/// A logged-in connection with the profile's pins loaded.
pub struct Connected {
    pub client: Client,
    pub profile: Profile,
    pub pins: Pins,
    pub rooms: Vec<RoomSummary>,
}

pub fn server_url(cli_server: Option<&str>, profile: &Profile) -> String {
    cli_server
        .map(str::to_owned)
        .or_else(|| profile.config.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

pub async fn connect(profile: Profile, url: &str, keys: &KeyPair) -> CliResult<Connected> {
    let pins = profile.pins()?;
    let mut client = Client::connect(url)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    for (user, pin) in &pins.users {
        let (sign, enc) = pin.der()?;
        client
            .pin_keys(user, &sign, &enc)
            .map_err(|e| e.to_string())?;
    }
    for (room_id, users) in &pins.recipients {
        client.set_told_recipients(room_id, users.iter().cloned());
    }
    client.on_notice(Box::new(|n| eprintln!("{}", describe(n))));
    let identity = Identity {
        username: profile.config.username.clone(),
        keys: keys.clone(),
    };
    let rooms = client.login(&identity).await.map_err(|e| match e.code() {
        Some(e2ee_chat::protocol::ErrorCode::UnknownUser) => {
            format!(
                "{} is not registered on {url}: run `e2ee-chat register`",
                identity.username
            )
        }
        _ => format!("login failed: {e}"),
    })?;
    Ok(Connected {
        client,
        profile,
        pins,
        rooms,
    })
}

/// A notice as a line for people.
pub fn describe(n: &Notice) -> String {
    match n {
        Notice::NewRecipient {
            room_id,
            username,
            fingerprint,
        } => format!(
            "NEW RECIPIENT in {}: {} (fingerprint {}) will be able to read what you send there",
            escape(room_id),
            escape(username),
            fingerprint_display(fingerprint)
        ),
    }
}

/// A fingerprint as typed by a person: hex digits, any case, spaces ignored.
pub fn parse_fingerprint(words: &[String]) -> CliResult<[u8; 32]> {
    let hex_digits: String = words
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = hex::decode(hex_digits.to_ascii_lowercase())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or("a fingerprint is 64 hex digits (spaces allowed)")?;
    let mut fp = [0u8; 32];
    fp.copy_from_slice(&bytes);
    Ok(fp)
}

impl Connected {
    /// Saves users seen for the first time and the recipients announced, and
    /// returns the users whose keys changed.
    pub fn persist_pins(&mut self) -> CliResult<Vec<String>> {
        let mut changed = false;
        for (room_id, users) in self.client.told_recipients() {
            let saved = self.pins.recipients.entry(room_id.clone()).or_default();
            for u in users {
                changed |= saved.insert(u.clone());
            }
        }
        let new: Vec<(String, Pin)> = self
            .client
            .pins()
            .filter(|(u, _)| !self.pins.users.contains_key(*u))
            .filter_map(|(u, _)| {
                let k = self.client.pinned(u)?;
                Some((u.to_owned(), Pin::new(&k.sign_der, &k.enc_der)))
            })
            .collect();
        for (u, pin) in new {
            self.pins.users.insert(u, pin);
            changed = true;
        }
        if changed {
            self.profile.save_pins(&self.pins)?;
        }
        Ok(self.client.key_changes.clone())
    }

    pub fn warn_key_changes(&mut self) -> CliResult<()> {
        for user in self.persist_pins()? {
            eprintln!(
                "WARNING: the keys of {user} have CHANGED since you first saw them. Their messages are \
                 shown as untrusted and sending to rooms with them is refused. Compare fingerprints \
                 with {user} in person, then run `e2ee-chat trust {user} FINGERPRINT`."
            );
        }
        Ok(())
    }

    /// Trusts `m`'s keys if their fingerprint is `wanted` (the one the user
    /// compared with them); refuses, changing nothing, if the server serves
    /// other keys. Returns the pin it replaced, if different.
    pub fn trust(
        &mut self,
        m: &e2ee_chat::protocol::Member,
        wanted: [u8; 32],
    ) -> CliResult<Option<Pin>> {
        let user = escape(&m.username);
        let served = e2ee_chat::crypto::fingerprint(&m.sign_key, &m.enc_key);
        if served != wanted {
            return Err(format!(
                "NOT trusted: the server serves keys for {user} with fingerprint\n  {}\n\
                 which is not the one you gave\n  {}\n\
                 Check it with {user} again; the server may be lying about their keys.",
                fingerprint_display(&served),
                fingerprint_display(&wanted)
            ));
        }
        self.client
            .pin_keys(&m.username, &m.sign_key, &m.enc_key)
            .map_err(|e| e.to_string())?;
        let pin = Pin::new(&m.sign_key, &m.enc_key);
        let old = self.pins.users.insert(m.username.clone(), pin.clone());
        self.profile.save_pins(&self.pins)?;
        Ok(old.filter(|o| *o != pin))
    }

    /// A room by id, or by name (any case) among listed and joined rooms.
    pub async fn resolve(&mut self, room: &str) -> CliResult<RoomSummary> {
        if let Some(r) = self
            .rooms
            .iter()
            .find(|r| r.room_id == room || r.name.eq_ignore_ascii_case(room))
        {
            return Ok(r.clone());
        }
        let (listed, _, _) = self
            .client
            .list_rooms(None, Some(1000))
            .await
            .map_err(|e| e.to_string())?;
        listed
            .into_iter()
            .find(|r| r.room_id == room || r.name.to_lowercase() == room.to_lowercase())
            .ok_or_else(|| format!("no room {room:?}"))
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) from milliseconds since the epoch.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One message as shown: the sender's signed time when it verified (else
/// the server's), the mark, and the escaped text.
pub struct Shown {
    pub seq: u64,
    pub time: u64,
    pub sender: String,
    pub mark: &'static str,
    pub text: String,
}

/// How a message is shown: its text only when it verified and decrypted
/// with the sender's pinned keys; `None` for a copy of one already shown
/// (a replay). Everything from the network is escaped.
pub fn render(client: &mut Client, room_id: &str, m: &MessageData) -> Option<Shown> {
    let shown = |time, mark, text: String| Shown {
        seq: m.seq,
        time,
        sender: escape(&m.sender),
        mark,
        text,
    };
    if client.key_changes.contains(&m.sender) {
        return Some(shown(
            m.ts,
            "!",
            "[untrusted: the sender's keys changed; not shown]".into(),
        ));
    }
    match client.accept_in(room_id, m) {
        Ok(Some(d)) => Some(shown(d.sent_at, "✓", escape(&d.text))),
        Ok(None) => None,
        Err(e) => Some(shown(
            m.ts,
            "✗",
            format!("[failed: {}]", escape(&e.to_string())),
        )),
    }
}
