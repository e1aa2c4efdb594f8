//! History pages, one algorithm for every store: which seqs a query may
//! return ([`HistoryQuery::seq_range`]), how many rows a store reads at a
//! time ([`HistoryQuery::fetch`]), the walk over the requester's membership
//! periods ([`read_page`]) and the count and byte limits ([`PageBuilder`]).
//! A store supplies only its dialect: [`MessageRows::chunk`]. Every entry
//! of a member's periods is theirs to read (the group decides what a
//! device can decrypt).

use super::{StoreError, StoredEntry};

/// Rows read beyond the page's size per query: one, to know `has_more`.
const SPARE_ROWS: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub after_seq: Option<u64>,
    pub before_seq: Option<u64>,
    pub limit: usize,
    /// The page stops early (`has_more`) before the message that would take
    /// it past this many bytes; it always holds at least one message.
    pub max_bytes: usize,
}

impl HistoryQuery {
    /// Pages run ascending after `after_seq`, else descending (and are
    /// reversed at the end).
    pub fn ascending(&self) -> bool {
        self.after_seq.is_some()
    }

    /// The seqs the page may hold, both ends included, clamped to the
    /// databases' signed 64-bit integers.
    pub fn seq_range(&self) -> (i64, i64) {
        const TOP: u64 = i64::MAX as u64;
        let lo = self.after_seq.map_or(1, |a| a.saturating_add(1)).min(TOP);
        let hi = self
            .before_seq
            .map_or(TOP, |b| b.saturating_sub(1))
            .min(TOP);
        (lo as i64, hi as i64)
    }

    /// How many rows a store reads per query while it fills the page.
    pub fn fetch(&self) -> usize {
        self.limit.max(1) + SPARE_ROWS
    }
}

/// What a history page holds (log entries; a trait so the walk is tested
/// with plain numbers).
pub trait PageItem {
    /// Its place in the room's log.
    fn seq(&self) -> u64;
    /// About what it costs on the wire.
    fn wire_len(&self) -> usize;
}

/// Framing and fixed fields of one item on the wire, about.
const FRAMING: usize = 128;

impl PageItem for StoredEntry {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn wire_len(&self) -> usize {
        self.entry.len() + FRAMING
    }
}

/// Builds a history page from items read in query order, so every store
/// applies the count and byte limits the same way.
pub struct PageBuilder<T = StoredEntry> {
    query: HistoryQuery,
    bytes: usize,
    page: HistoryPage<T>,
}

impl<T: PageItem> PageBuilder<T> {
    pub fn new(query: HistoryQuery) -> Self {
        PageBuilder {
            query,
            bytes: 0,
            page: HistoryPage {
                messages: Vec::with_capacity(query.limit.clamp(1, 512)),
                has_more: false,
            },
        }
    }

    /// Adds the next item; false when the page is full (it then has
    /// `has_more` set and the caller stops reading).
    pub fn push(&mut self, m: T) -> bool {
        let len = m.wire_len();
        let full = self.page.messages.len() >= self.query.limit.max(1)
            || (!self.page.messages.is_empty() && self.bytes + len > self.query.max_bytes);
        if full {
            self.page.has_more = true;
            return false;
        }
        self.bytes += len;
        self.page.messages.push(m);
        true
    }

    /// Marks that more messages exist beyond what was read (a store that
    /// read a bounded number of rows and used them all).
    pub fn more(&mut self) {
        self.page.has_more = true;
    }

    /// The page in ascending seq order.
    pub fn finish(mut self) -> HistoryPage<T> {
        if !self.query.ascending() {
            self.page.messages.reverse();
        }
        self.page
    }
}

/// A page of history in ascending seq order.
#[derive(Debug, Clone)]
pub struct HistoryPage<T = StoredEntry> {
    pub messages: Vec<T>,
    pub has_more: bool,
}

impl<T> Default for HistoryPage<T> {
    fn default() -> Self {
        HistoryPage {
            messages: Vec::new(),
            has_more: false,
        }
    }
}

/// What a store answers for the page walk, in its own dialect.
pub(crate) trait MessageRows<T = StoredEntry> {
    /// Up to `n` of the room's rows with seq in `a..=b`, ascending or
    /// descending as asked.
    async fn chunk(
        &mut self,
        a: i64,
        b: i64,
        n: usize,
        ascending: bool,
    ) -> Result<Vec<T>, StoreError>;
}

/// Fills a page from the requester's membership `periods` (seq ranges, both
/// ends included, ascending by start): only the ranges inside them are
/// read, newest or oldest first, `q.fetch()` rows at a time, so a late
/// joiner's history never scans what was sent before they joined.
pub(crate) async fn read_page<T: PageItem, R: MessageRows<T>>(
    rows: &mut R,
    mut periods: Vec<(i64, i64)>,
    q: HistoryQuery,
) -> Result<HistoryPage<T>, StoreError> {
    let (lo, hi) = q.seq_range();
    let ascending = q.ascending();
    if !ascending {
        periods.reverse();
    }
    let fetch = q.fetch();
    let mut page = PageBuilder::new(q);
    for (from, to) in periods {
        let (mut a, mut b) = (from.max(lo), to.min(hi));
        while a <= b {
            let chunk = rows.chunk(a, b, fetch, ascending).await?;
            let read = chunk.len();
            for item in chunk {
                let seq = item.seq().min(i64::MAX as u64) as i64;
                if ascending {
                    a = seq.saturating_add(1);
                } else {
                    b = seq - 1;
                }
                if !page.push(item) {
                    return Ok(page.finish());
                }
            }
            if read < fetch {
                break;
            }
        }
    }
    Ok(page.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A room log in memory: every seq in `1..=last` but the `purged` ones.
    struct Log {
        last: i64,
        purged: Vec<i64>,
        reads: usize,
    }

    impl MessageRows for Log {
        async fn chunk(
            &mut self,
            a: i64,
            b: i64,
            n: usize,
            ascending: bool,
        ) -> Result<Vec<StoredEntry>, StoreError> {
            self.reads += 1;
            let b = b.min(self.last);
            let mut seqs: Vec<i64> = (a..=b).filter(|s| !self.purged.contains(s)).collect();
            if !ascending {
                seqs.reverse();
            }
            Ok(seqs
                .into_iter()
                .take(n)
                .map(|seq| StoredEntry {
                    seq: seq as u64,
                    ts: 0,
                    entry: crate::message::LogEntry {
                        kind: crate::message::EntryKind::Message,
                        sender: "alice".into(),
                        device_id: vec![],
                        epoch: 0,
                        data: vec![0; 100],
                        msg_id: None,
                        group_info: None,
                    },
                })
                .collect())
        }
    }

    fn page(log: &mut Log, periods: &[(i64, i64)], q: HistoryQuery) -> (Vec<u64>, bool) {
        let p = read_page(log, periods.to_vec(), q)
            .now_or_never()
            .expect("in memory")
            .unwrap();
        (p.messages.iter().map(|m| m.seq).collect(), p.has_more)
    }

    fn q(after: Option<u64>, before: Option<u64>, limit: usize) -> HistoryQuery {
        HistoryQuery {
            after_seq: after,
            before_seq: before,
            limit,
            max_bytes: usize::MAX,
        }
    }

    #[test]
    fn pages_keep_inside_periods_and_pass_over_purged_rows() {
        let mut log = Log {
            last: 100,
            purged: vec![7, 95],
            reads: 0,
        };
        let periods = [(5, 10), (90, i64::MAX)];
        assert_eq!(
            page(&mut log, &periods, q(None, None, 4)),
            (vec![97, 98, 99, 100], true)
        );
        assert_eq!(
            page(&mut log, &periods, q(None, Some(97), 4)),
            (vec![92, 93, 94, 96], true)
        );
        assert_eq!(
            page(&mut log, &periods, q(None, Some(92), 10)),
            (vec![5, 6, 8, 9, 10, 90, 91], false)
        );
        assert_eq!(
            page(&mut log, &periods, q(Some(8), None, 3)),
            (vec![9, 10, 90], true)
        );
        assert_eq!(
            page(&mut log, &periods, q(Some(u64::MAX), None, 3)),
            (vec![], false)
        );
    }

    #[test]
    fn long_ranges_are_read_in_chunks_of_the_fetch_size() {
        let mut log = Log {
            last: 1000,
            purged: vec![],
            reads: 0,
        };
        let (seqs, more) = page(&mut log, &[(1, i64::MAX)], q(Some(0), None, 10));
        assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
        assert!(more);
        // 11 rows a read: the first holds the page and the one that says more.
        assert_eq!(log.reads, 1);
        // Many short periods: one read each, until the page is full.
        log.reads = 0;
        let periods: Vec<(i64, i64)> = (0..20).map(|i| (i * 10 + 1, i * 10 + 2)).collect();
        let (seqs, more) = page(&mut log, &periods, q(Some(0), None, 10));
        assert_eq!(seqs, [1, 2, 11, 12, 21, 22, 31, 32, 41, 42]);
        assert!(more);
        assert_eq!(log.reads, 6);
    }

    #[test]
    fn seq_ranges_clamp_to_the_database_integers() {
        assert_eq!(q(None, None, 1).seq_range(), (1, i64::MAX));
        assert_eq!(q(Some(u64::MAX), Some(0), 1).seq_range(), (i64::MAX, 0));
        assert_eq!(q(Some(3), Some(9), 1).seq_range(), (4, 8));
    }
}
