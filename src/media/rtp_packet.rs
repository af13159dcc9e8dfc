//! A received RTP packet, read in place (RFC 3550 §5.1): fixed header, CSRC
//! list, header extension and padding skipped with every length checked
//! against the datagram. Written by hand because a packet from the network
//! must never be able to panic the media path (the `rtp` crate's parser
//! panics on a header extension whose elements overrun it — found by
//! `make fuzz`); sending still uses the `rtp` crate.

/// The parts of a received RTP packet the media path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    /// Payload type.
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub sequence_number: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

/// Why a datagram is not an RTP packet we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than its headers say.
    Truncated,
    /// Not RTP version 2.
    Version,
    /// Padding longer than the payload.
    Padding,
}

impl<'a> RtpView<'a> {
    /// Read `data` as an RTP packet.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtpError> {
        if data.len() < 12 {
            return Err(RtpError::Truncated);
        }
        if data[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let padding = data[0] & 0x20 != 0;
        let extension = data[0] & 0x10 != 0;
        let csrc_count = usize::from(data[0] & 0x0f);
        let mut offset = 12 + 4 * csrc_count;
        if extension {
            let ext = data.get(offset..offset + 4).ok_or(RtpError::Truncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            offset += 4 + 4 * words;
        }
        let mut end = data.len();
        if offset > end {
            return Err(RtpError::Truncated);
        }
        if padding {
            let pad = usize::from(data[end - 1]);
            if pad == 0 || offset + pad > end {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        Ok(Self {
            payload_type: data[1] & 0x7f,
            marker: data[1] & 0x80 != 0,
            sequence_number: u16::from_be_bytes([data[2], data[3]]),
            timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            payload: &data[offset..end],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_util::marshal::Marshal;

    #[test]
    fn reads_what_the_rtp_crate_writes() {
        let packet = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                marker: true,
                payload_type: 101,
                sequence_number: 65535,
                timestamp: 0xdead_beef,
                ssrc: 42,
                csrc: vec![1, 2],
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(&[1, 2, 3]),
        };
        let wire = packet.marshal().expect("marshal");
        let v = RtpView::parse(&wire).expect("parse");
        assert_eq!(
            (
                v.payload_type,
                v.marker,
                v.sequence_number,
                v.timestamp,
                v.ssrc
            ),
            (101, true, 65535, 0xdead_beef, 42)
        );
        assert_eq!(v.payload, &[1, 2, 3]);
    }

    #[test]
    fn extensions_and_padding_are_skipped_and_overruns_refused() {
        // Extension of one word, payload [9, 9], two bytes of padding.
        let mut p = vec![0xb0, 0x00, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        p.extend([0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0, 9, 9, 0, 2]);
        let v = RtpView::parse(&p).expect("parse");
        assert_eq!(v.payload, &[9, 9]);
        // The extension claims more words than there are.
        let mut q = p.clone();
        q[15] = 200;
        assert_eq!(RtpView::parse(&q), Err(RtpError::Truncated));
        // Padding longer than the packet.
        let mut r = p.clone();
        *r.last_mut().expect("byte") = 200;
        assert_eq!(RtpView::parse(&r), Err(RtpError::Padding));
        // The input the rtp crate panicked on: one-byte extension elements
        // running past the block.
        let s = [
            0x90, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xbe, 0xde, 0, 1, 0x1f, 2, 3, 4,
        ];
        assert!(RtpView::parse(&s).is_ok_and(|v| v.payload.is_empty()));
        assert_eq!(RtpView::parse(&[0x80; 11]), Err(RtpError::Truncated));
        assert_eq!(RtpView::parse(&[0x40; 12]), Err(RtpError::Version));
        // 15 CSRCs claimed in a 12-byte packet.
        let mut t = vec![0x8f];
        t.extend([0; 11]);
        assert_eq!(RtpView::parse(&t), Err(RtpError::Truncated));
    }
}
