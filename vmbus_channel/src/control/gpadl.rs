//! A GPADL on the wire: the range buffer split over one GPADL_HEADER and as many GPADL_BODY
//! messages as it needs, and the receiver's reassembly.
//!
//! The header says how long the whole range buffer is (`len`, bytes) and how many ranges it
//! holds (`count`); it carries the first [`GpadlHeader::MAX_WORDS`] words, each body up to
//! [`GpadlBody::MAX_WORDS`] more. The sender (Linux `create_gpadl_header`) fills each message
//! before starting the next; the receiver only accepts exactly that shape, so a hostile
//! sender cannot announce more than it sends or send more than it announced.

use super::GpadlBody;
use super::GpadlHeader;
use super::Message;
use super::MessageBuf;
use crate::bus::GpadlRequest;
use crate::protocol::GpadlId;
use zerocopy::little_endian::U64;

/// Largest range buffer a GPADL_HEADER can announce: `len` is a u16 byte count.
pub const MAX_GPADL_WORDS: usize = u16::MAX as usize / 8;

/// Why a GPADL's messages do not add up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpadlMessageError {
    /// `len` is not a whole number of words, or zero.
    #[error("range buffer length {0} is not a non-zero multiple of 8")]
    BadLength(u16),
    /// The header carries more words than `len` announces.
    #[error("header carries {carried} words but announces {announced}")]
    HeaderOverflow {
        /// Words in the header message.
        carried: usize,
        /// Words announced by `len`.
        announced: usize,
    },
    /// A message that is not the last is not full.
    #[error("a non-final GPADL message carries {0} words")]
    ShortFragment(usize),
    /// A body carries more words than remain.
    #[error("body carries {carried} words but only {remaining} remain")]
    BodyOverflow {
        /// Words in the body message.
        carried: usize,
        /// Words still expected.
        remaining: usize,
    },
    /// The range buffer does not fit the message format.
    #[error("range buffer of {0} words cannot be sent")]
    TooLarge(usize),
}

/// Builds the GPADL_HEADER and GPADL_BODY messages for a GPADL.
#[derive(Debug, Clone)]
pub struct GpadlMessages<'a> {
    channel_id: u32,
    request: &'a GpadlRequest,
    next_word: usize,
    message_number: u32,
}

impl<'a> GpadlMessages<'a> {
    /// The messages for `request` on `channel_id`; fails if the range buffer is too long for
    /// the header's u16 length field.
    pub fn new(channel_id: u32, request: &'a GpadlRequest) -> Result<Self, GpadlMessageError> {
        if request.buf.is_empty() || request.buf.len() > MAX_GPADL_WORDS {
            return Err(GpadlMessageError::TooLarge(request.buf.len()));
        }
        Ok(Self {
            channel_id,
            request,
            next_word: 0,
            message_number: 0,
        })
    }
}

impl Iterator for GpadlMessages<'_> {
    type Item = MessageBuf;

    fn next(&mut self) -> Option<MessageBuf> {
        let rest = self.request.buf.get(self.next_word..)?;
        if rest.is_empty() {
            return None;
        }
        let first = self.next_word == 0;
        let max = if first {
            GpadlHeader::MAX_WORDS
        } else {
            GpadlBody::MAX_WORDS
        };
        let take = rest.len().min(max);
        let words: Vec<U64> = rest.get(..take)?.iter().map(|&w| U64::new(w)).collect();
        self.next_word += take;
        let message = if first {
            let len = u16::try_from(self.request.buf.len() * 8).ok()?;
            Message::GpadlHeader(
                GpadlHeader {
                    channel_id: self.channel_id.into(),
                    gpadl_id: self.request.id.0.into(),
                    len: len.into(),
                    count: self.request.count.into(),
                },
                &words,
            )
        } else {
            self.message_number = self.message_number.wrapping_add(1);
            Message::GpadlBody(
                GpadlBody {
                    message_number: self.message_number.into(),
                    gpadl_id: self.request.id.0.into(),
                },
                &words,
            )
        };
        Some(message.encode())
    }
}

/// A GPADL whose header arrived and whose bodies are still coming.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialGpadl {
    channel_id: u32,
    request: GpadlRequest,
    announced: usize,
}

/// What a fragment did to a partial GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembly {
    /// More bodies are expected.
    Incomplete(PartialGpadl),
    /// The GPADL is complete: the channel it is for and its request.
    Complete(u32, GpadlRequest),
}

impl PartialGpadl {
    /// Starts a GPADL from its header message.
    pub fn start(header: &GpadlHeader, words: &[U64]) -> Result<Assembly, GpadlMessageError> {
        let len = header.len.get();
        if len == 0 || !len.is_multiple_of(8) {
            return Err(GpadlMessageError::BadLength(len));
        }
        let announced = usize::from(len / 8);
        if words.len() > announced {
            return Err(GpadlMessageError::HeaderOverflow {
                carried: words.len(),
                announced,
            });
        }
        if words.len() < announced && words.len() < GpadlHeader::MAX_WORDS {
            return Err(GpadlMessageError::ShortFragment(words.len()));
        }
        let mut buf = Vec::with_capacity(announced);
        buf.extend(words.iter().map(|w| w.get()));
        Ok(Self {
            channel_id: header.channel_id.get(),
            request: GpadlRequest {
                id: GpadlId(header.gpadl_id.get()),
                count: header.count.get(),
                buf,
            },
            announced,
        }
        .check_complete())
    }

    /// The channel the GPADL is for.
    pub fn channel_id(&self) -> u32 {
        self.channel_id
    }

    /// The GPADL id.
    pub fn gpadl_id(&self) -> GpadlId {
        self.request.id
    }

    /// Adds a body message's words.
    pub fn add_body(mut self, words: &[U64]) -> Result<Assembly, GpadlMessageError> {
        // Saturating: a restored value may not keep the invariant `buf <= announced`.
        let remaining = self.announced.saturating_sub(self.request.buf.len());
        if words.len() > remaining {
            return Err(GpadlMessageError::BodyOverflow {
                carried: words.len(),
                remaining,
            });
        }
        if words.len() < remaining && words.len() < GpadlBody::MAX_WORDS {
            return Err(GpadlMessageError::ShortFragment(words.len()));
        }
        self.request.buf.extend(words.iter().map(|w| w.get()));
        Ok(self.check_complete())
    }

    fn check_complete(self) -> Assembly {
        if self.request.buf.len() == self.announced {
            Assembly::Complete(self.channel_id, self.request)
        } else {
            Assembly::Incomplete(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpadl::build_request;
    use proptest::prelude::*;

    fn reassemble(messages: &[MessageBuf]) -> Result<(u32, GpadlRequest), GpadlMessageError> {
        let mut partial = None;
        for m in messages {
            let step = match Message::parse(m.as_bytes()).unwrap() {
                Message::GpadlHeader(h, w) => PartialGpadl::start(&h, w)?,
                Message::GpadlBody(_, w) => {
                    let p: PartialGpadl = partial.take().unwrap();
                    p.add_body(w)?
                }
                other => panic!("unexpected {other:?}"),
            };
            match step {
                Assembly::Incomplete(p) => partial = Some(p),
                Assembly::Complete(c, r) => return Ok((c, r)),
            }
        }
        panic!("incomplete");
    }

    #[test]
    fn two_hundred_pages_take_a_header_and_seven_bodies() {
        let pfns: Vec<u64> = (1000..1200).collect();
        let request = build_request(GpadlId(7), [(0, 200 * 4096, pfns.as_slice())]);
        let messages: Vec<_> = GpadlMessages::new(3, &request).unwrap().collect();
        // 201 words: 27 in the header, then 28 per body.
        assert_eq!(messages.len(), 1 + 7);
        assert_eq!(messages[0].as_bytes().len(), 20 + 27 * 8);
        assert_eq!(messages[1].as_bytes().len(), 240);
        assert_eq!(messages[7].as_bytes().len(), 16 + 6 * 8);
        assert_eq!(reassemble(&messages).unwrap(), (3, request));
    }

    #[test]
    fn header_announcing_fewer_words_than_it_carries_is_refused() {
        let header = GpadlHeader {
            channel_id: 1.into(),
            gpadl_id: 1.into(),
            len: 8.into(),
            count: 1.into(),
        };
        let words = [U64::new(4096), U64::new(5)];
        assert_eq!(
            PartialGpadl::start(&header, &words),
            Err(GpadlMessageError::HeaderOverflow {
                carried: 2,
                announced: 1
            })
        );
    }

    #[test]
    fn bad_lengths_and_short_fragments_are_refused() {
        let mut header = GpadlHeader {
            channel_id: 1.into(),
            gpadl_id: 1.into(),
            len: 12.into(),
            count: 1.into(),
        };
        assert_eq!(
            PartialGpadl::start(&header, &[]),
            Err(GpadlMessageError::BadLength(12))
        );
        header.len = 0.into();
        assert_eq!(
            PartialGpadl::start(&header, &[]),
            Err(GpadlMessageError::BadLength(0))
        );
        // Announces 40 words but the header is not full.
        header.len = 320.into();
        assert_eq!(
            PartialGpadl::start(&header, &[U64::new(1)]),
            Err(GpadlMessageError::ShortFragment(1))
        );
        let full = [U64::new(0); GpadlHeader::MAX_WORDS];
        let Assembly::Incomplete(p) = PartialGpadl::start(&header, &full).unwrap() else {
            panic!()
        };
        assert_eq!(
            p.clone().add_body(&[U64::new(0); 14]),
            Err(GpadlMessageError::BodyOverflow {
                carried: 14,
                remaining: 13
            })
        );
        assert_eq!(
            p.add_body(&[U64::new(0); 3]),
            Err(GpadlMessageError::ShortFragment(3))
        );
    }

    #[test]
    fn oversized_request_cannot_be_sent() {
        let request = GpadlRequest {
            id: GpadlId(1),
            count: 1,
            buf: vec![0; MAX_GPADL_WORDS + 1],
        };
        assert!(GpadlMessages::new(1, &request).is_err());
    }

    proptest! {
        #[test]
        fn split_then_reassemble_is_identity(words in 1usize..400, channel in any::<u32>()) {
            let request = GpadlRequest { id: GpadlId(9), count: 1, buf: (0..words as u64).collect() };
            let messages: Vec<_> = GpadlMessages::new(channel, &request).unwrap().collect();
            prop_assert!(messages.iter().all(|m| m.as_bytes().len() <= super::super::MAX_MESSAGE_SIZE));
            prop_assert_eq!(reassemble(&messages).unwrap(), (channel, request));
        }
    }
}
