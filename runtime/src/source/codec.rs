//! The MQTT wire format for the source: what weir sends (CONNECT, SUBSCRIBE, PUBACK,
//! PUBREC, PUBCOMP, PINGREQ, DISCONNECT) and what it reads, for MQTT 5 and 3.1.1, on top of rumqttc's
//! packet codec. Pure functions over byte buffers; the connection loop does the I/O.
//!
//! A PUBLISH is framed here in one of two ways: whole, when its packet fits in memory, or as
//! a header whose payload the reader then streams (hashing it and keeping only a prefix),
//! when it is larger than weir will hold. The second is what lets one huge message go to
//! quarantine instead of stopping the connection.

use crate::config::RetainHandling;
use bytes::{BufMut, BytesMut};
use rumqttc::v5::mqttbytes::v5;

/// MQTT's largest remaining length (256 MiB − 1).
pub const MAX_REMAINING: usize = weir_core::message::MQTT_MAX_REMAINING;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// What weir needs to say in CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Client id.
    pub client_id: String,
    /// Keep-alive, seconds.
    pub keep_alive_s: u16,
    /// Session expiry (MQTT 5), seconds.
    pub session_expiry_s: u32,
    /// Receive maximum (MQTT 5).
    pub receive_maximum: u16,
    /// Credentials.
    pub login: Option<(String, crate::config::Secret)>,
}

/// The fixed header: packet type and flags, and the remaining length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// First byte (type << 4 | flags).
    pub byte1: u8,
    /// Bytes the fixed header takes.
    pub header_len: usize,
    /// Remaining length.
    pub remaining: usize,
}

impl Fixed {
    /// Packet type (3 = PUBLISH, ...).
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }
    /// Whole packet length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// A malformed or unexpected packet: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// Parse a fixed header from the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn fixed_header(buf: &[u8]) -> Result<Option<Fixed>, ProtocolError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, b) in buf[1..].iter().take(4).enumerate() {
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Fixed {
                byte1,
                header_len: i + 2,
                remaining,
            }));
        }
    }
    if buf.len() >= 5 {
        return Err(ProtocolError("malformed remaining length".into()));
    }
    Ok(None)
}

/// A received PUBLISH, protocol-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Payload (the whole payload, or only a prefix for a streamed one).
    pub payload: Vec<u8>,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Redelivery flag.
    pub dup: bool,
    /// Retained message.
    pub retain: bool,
    /// MQTT 5 user properties.
    pub properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
}

/// One subscription's result in a SUBACK.
pub type Granted = Result<u8, String>;

/// A packet weir acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Connection accepted (`refused: None`) or refused with a reason; `fatal` refusals
    /// (bad credentials, not authorised, bad client id) will not get better by retrying.
    ConnAck {
        /// The broker kept weir's session.
        session_present: bool,
        /// Why the connection was refused, and whether retrying can help.
        refused: Option<(String, bool)>,
    },
    /// A message.
    Publish(Publish),
    /// Subscription results, in filter order.
    SubAck {
        /// Packet id of the SUBSCRIBE.
        pkid: u16,
        /// Granted QoS or the failure reason, per filter.
        granted: Vec<Granted>,
    },
    /// Keep-alive answer.
    PingResp,
    /// The broker is closing the connection (MQTT 5), with its reason.
    Disconnect(String),
    /// The second step of a QoS 2 delivery: the broker has the PUBREC of this packet id and
    /// releases it; weir answers PUBCOMP once it has forgotten the id for good.
    PubRel(u16),
    /// Anything else (weir publishes nothing, so PUBACK/PUBREC/... are unexpected).
    Other(u8),
}

impl Proto {
    /// CONNECT: persistent session, no will; MQTT 5 adds session expiry and receive maximum
    /// and deliberately no Maximum Packet Size, so the broker never drops a message for
    /// being larger than weir would like: weir quarantines those itself.
    pub fn connect(self, o: &ConnectOptions, out: &mut BytesMut) -> Result<(), ProtocolError> {
        let err = |e: rumqttc::v5::mqttbytes::Error| ProtocolError(format!("{e:?}"));
        match self {
            Proto::V5 => {
                let mut props = v5::ConnectProperties::new();
                props.session_expiry_interval = Some(o.session_expiry_s);
                props.receive_maximum = Some(o.receive_maximum);
                let connect = v5::Connect {
                    keep_alive: o.keep_alive_s,
                    client_id: o.client_id.clone(),
                    clean_start: false,
                    properties: Some(props),
                };
                let login = o.login.as_ref().map(|(u, p)| v5::Login::new(u, p.expose()));
                v5::Packet::Connect(connect, None, login)
                    .write(out, None)
                    .map_err(err)?;
            }
            Proto::V311 => {
                let mut connect = rumqttc::Connect::new(o.client_id.clone());
                connect.keep_alive = o.keep_alive_s;
                connect.clean_session = false;
                if let Some((u, p)) = &o.login {
                    connect.set_login(u, p.expose());
                }
                connect
                    .write(out)
                    .map_err(|e| ProtocolError(format!("{e:?}")))?;
            }
        }
        Ok(())
    }

    /// SUBSCRIBE to every filter at QoS 1, or at QoS 2 for an exactly-once group (whose
    /// PUBREC leaves only after the Kafka transaction holding the message committed).
    pub fn subscribe(
        self,
        pkid: u16,
        filters: &[String],
        (retain, qos2): (RetainHandling, bool),
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        match self {
            Proto::V5 => {
                let qos = if qos2 {
                    rumqttc::v5::mqttbytes::QoS::ExactlyOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                };
                let filters = filters.iter().map(|f| {
                    let mut filter = v5::Filter::new(f.clone(), qos);
                    filter.retain_forward_rule = match retain {
                        RetainHandling::Always => v5::RetainForwardRule::OnEverySubscribe,
                        RetainHandling::NewSubscription => v5::RetainForwardRule::OnNewSubscribe,
                        RetainHandling::Never => v5::RetainForwardRule::Never,
                    };
                    filter
                });
                let mut sub = v5::Subscribe::new_many(filters, None);
                sub.pkid = pkid;
                v5::Packet::Subscribe(sub)
                    .write(out, None)
                    .map_err(|e| ProtocolError(format!("{e:?}")))?;
            }
            Proto::V311 => {
                let qos = if qos2 {
                    rumqttc::QoS::ExactlyOnce
                } else {
                    rumqttc::QoS::AtLeastOnce
                };
                let filters = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos));
                let mut sub = rumqttc::Subscribe::new_many(filters);
                sub.pkid = pkid;
                sub.write(out)
                    .map_err(|e| ProtocolError(format!("{e:?}")))?;
            }
        }
        Ok(())
    }

    /// PUBACK (success; the MQTT 5 short form without reason code is identical).
    pub fn puback(self, pkid: u16, out: &mut BytesMut) {
        out.put_slice(&[0x40, 0x02]);
        out.put_u16(pkid);
    }

    /// PUBREC (success, short form): a QoS 2 message is received for good.
    pub fn pubrec(self, pkid: u16, out: &mut BytesMut) {
        out.put_slice(&[0x50, 0x02]);
        out.put_u16(pkid);
    }

    /// PUBCOMP (success, short form): the packet id of a released QoS 2 message is free.
    pub fn pubcomp(self, pkid: u16, out: &mut BytesMut) {
        out.put_slice(&[0x70, 0x02]);
        out.put_u16(pkid);
    }

    /// PINGREQ.
    pub fn pingreq(self, out: &mut BytesMut) {
        out.put_slice(&[0xC0, 0x00]);
    }

    /// DISCONNECT, normal (the session stays at the broker).
    pub fn disconnect(self, out: &mut BytesMut) {
        out.put_slice(&[0xE0, 0x00]);
    }

    /// Decode one whole packet from the front of `buf` (the caller has checked that
    /// `fixed.frame_len()` bytes are there).
    pub fn decode(self, buf: &mut BytesMut) -> Result<Frame, ProtocolError> {
        match self {
            Proto::V5 => decode_v5(buf),
            Proto::V311 => decode_v311(buf),
        }
    }

    /// For a PUBLISH too large to hold: how many bytes of its variable header (topic,
    /// packet id, MQTT 5 properties) follow the fixed header, if `buf` (which starts with
    /// the fixed header) holds enough to tell; `Ok(None)` when more bytes are needed.
    pub fn publish_header_len(
        self,
        fixed: &Fixed,
        buf: &[u8],
    ) -> Result<Option<usize>, ProtocolError> {
        let body = &buf[fixed.header_len..];
        if body.len() < 2 {
            return Ok(None);
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let qos = (fixed.byte1 >> 1) & 0b11;
        let mut len = 2 + topic_len + if qos > 0 { 2 } else { 0 };
        if self == Proto::V5 {
            let Some(rest) = body.get(len..) else {
                return Ok(None);
            };
            let Some(props) = fixed_header(&[&[0u8][..], rest].concat())? else {
                return Ok(None);
            };
            len += props.frame_len() - 1;
        }
        if len > fixed.remaining {
            return Err(ProtocolError(
                "PUBLISH header longer than the packet".into(),
            ));
        }
        Ok(Some(len))
    }

    /// Decode the header of a streamed PUBLISH: `header` is the fixed header and
    /// `header_len` variable-header bytes; the payload is left out.
    pub fn decode_publish_header(
        self,
        fixed: &Fixed,
        header: &[u8],
    ) -> Result<Publish, ProtocolError> {
        let var = &header[fixed.header_len..];
        let mut packet = BytesMut::with_capacity(var.len() + 5);
        packet.put_u8(fixed.byte1);
        let mut n = var.len();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            packet.put_u8(b);
            if n == 0 {
                break;
            }
        }
        packet.put_slice(var);
        match self.decode(&mut packet)? {
            Frame::Publish(p) => Ok(p),
            _ => Err(ProtocolError("not a PUBLISH".into())),
        }
    }
}

/// A topic as text. One that is not UTF-8 (a broker that does not check) keeps its shape,
/// each bad sequence replaced by U+FFFD, so that it can still be routed and quarantined.
fn text(b: &[u8]) -> String {
    std::str::from_utf8(b).map_or_else(|_| String::from_utf8_lossy(b).into_owned(), str::to_owned)
}

fn malformed(e: &dyn std::fmt::Debug) -> ProtocolError {
    ProtocolError(format!("malformed packet: {e:?}"))
}

/// An MQTT 5 packet as weir acts on it.
fn decode_v5(buf: &mut BytesMut) -> Result<Frame, ProtocolError> {
    let packet = v5::Packet::read(buf, None).map_err(|e| malformed(&e))?;
    Ok(match packet {
        v5::Packet::ConnAck(a) => Frame::ConnAck {
            session_present: a.session_present,
            refused: connack_v5(a.code, a.properties.and_then(|p| p.reason_string)),
        },
        v5::Packet::Publish(p) => {
            let props = p.properties.unwrap_or_default();
            Frame::Publish(Publish {
                topic: text(&p.topic),
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                properties: props.user_properties,
                content_type: props.content_type,
            })
        }
        v5::Packet::SubAck(s) => Frame::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => Ok(q as u8),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        },
        v5::Packet::PingResp(_) => Frame::PingResp,
        v5::Packet::PubRel(r) => Frame::PubRel(r.pkid),
        v5::Packet::Disconnect(d) => {
            let why = d.properties.and_then(|p| p.reason_string);
            Frame::Disconnect(match why {
                Some(w) => format!("{:?}: {w}", d.reason_code),
                None => format!("{:?}", d.reason_code),
            })
        }
        other => Frame::Other(packet_kind_v5(&other)),
    })
}

/// An MQTT 3.1.1 packet as weir acts on it.
fn decode_v311(buf: &mut BytesMut) -> Result<Frame, ProtocolError> {
    let packet = rumqttc::Packet::read(buf, usize::MAX).map_err(|e| malformed(&e))?;
    Ok(match packet {
        rumqttc::Packet::ConnAck(a) => Frame::ConnAck {
            session_present: a.session_present,
            refused: connack_v311(a.code),
        },
        rumqttc::Packet::Publish(p) => Frame::Publish(Publish {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            properties: Vec::new(),
            content_type: None,
        }),
        rumqttc::Packet::SubAck(s) => Frame::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => Ok(q as u8),
                    rumqttc::SubscribeReasonCode::Failure => Err("Failure (0x80)".to_owned()),
                })
                .collect(),
        },
        rumqttc::Packet::PingResp => Frame::PingResp,
        rumqttc::Packet::PubRel(r) => Frame::PubRel(r.pkid),
        rumqttc::Packet::Disconnect => Frame::Disconnect("DISCONNECT".into()),
        _ => Frame::Other(0),
    })
}

fn connack_v5(code: v5::ConnectReturnCode, reason: Option<String>) -> Option<(String, bool)> {
    use v5::ConnectReturnCode as C;
    let fatal = match code {
        C::Success => return None,
        C::BadUserNamePassword
        | C::NotAuthorized
        | C::BadClientId
        | C::ClientIdentifierNotValid
        | C::UnsupportedProtocolVersion
        | C::RefusedProtocolVersion
        | C::Banned
        | C::BadAuthenticationMethod => true,
        _ => false,
    };
    let why = match reason {
        Some(r) => format!("{code:?} ({r})"),
        None => format!("{code:?}"),
    };
    Some((why, fatal))
}

fn connack_v311(code: rumqttc::ConnectReturnCode) -> Option<(String, bool)> {
    use rumqttc::ConnectReturnCode as C;
    match code {
        C::Success => None,
        C::ServiceUnavailable => Some((format!("{code:?}"), false)),
        _ => Some((format!("{code:?}"), true)),
    }
}

fn packet_kind_v5(p: &v5::Packet) -> u8 {
    match p {
        v5::Packet::Connect(..) => 1,
        v5::Packet::PubAck(_) => 4,
        v5::Packet::PubRec(_) => 5,
        v5::Packet::PubRel(_) => 6,
        v5::Packet::PubComp(_) => 7,
        v5::Packet::Subscribe(_) => 8,
        v5::Packet::Unsubscribe(_) => 10,
        v5::Packet::UnsubAck(_) => 11,
        v5::Packet::PingReq(_) => 12,
        v5::Packet::Auth(_) => 15,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_v5(topic: &str, payload: &[u8], props: Vec<(String, String)>) -> BytesMut {
        let mut p = v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload.to_vec(),
            None,
        );
        p.pkid = 7;
        p.properties = Some(v5::PublishProperties {
            user_properties: props,
            ..Default::default()
        });
        let mut out = BytesMut::new();
        v5::Packet::Publish(p).write(&mut out, None).unwrap();
        out
    }

    #[test]
    fn fixed_headers() {
        assert_eq!(fixed_header(&[]).unwrap(), None);
        assert_eq!(fixed_header(&[0x30]).unwrap(), None);
        assert_eq!(fixed_header(&[0x30, 0x80]).unwrap(), None);
        let f = fixed_header(&[0x32, 0x80, 0x01]).unwrap().unwrap();
        assert_eq!((f.kind(), f.header_len, f.remaining), (3, 3, 128));
        let f = fixed_header(&[0x30, 0xff, 0xff, 0xff, 0x7f])
            .unwrap()
            .unwrap();
        assert_eq!(f.remaining, MAX_REMAINING);
        assert!(fixed_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn whole_and_streamed_publish_agree() {
        let props = vec![("fw".to_owned(), "2.1".to_owned())];
        let mut buf = publish_v5("a/b", &[1, 2, 3, 4], props.clone());
        let fixed = fixed_header(&buf).unwrap().unwrap();
        let hl = Proto::V5.publish_header_len(&fixed, &buf).unwrap().unwrap();
        let head = Proto::V5
            .decode_publish_header(&fixed, &buf[..fixed.header_len + hl])
            .unwrap();
        assert_eq!(fixed.remaining - hl, 4, "payload length");
        let Frame::Publish(whole) = Proto::V5.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert!(buf.is_empty());
        assert_eq!(whole.payload, [1, 2, 3, 4]);
        assert_eq!((whole.topic.as_str(), whole.pkid, whole.qos), ("a/b", 7, 1));
        assert_eq!(whole.properties, props);
        assert_eq!(
            Publish {
                payload: vec![1, 2, 3, 4],
                ..head
            },
            whole
        );
        // Not enough bytes to tell yet.
        assert_eq!(
            Proto::V5.publish_header_len(&fixed, &[0x32, 0x10]).unwrap(),
            None
        );
    }

    /// A topic that is not UTF-8 keeps its shape, each bad byte replaced, rather than
    /// failing the connection: the message is still routed (or quarantined) by it.
    #[test]
    fn a_topic_that_is_not_utf8_is_taken_with_replacements() {
        let mut buf = publish_v5("a/b", &[1], vec![]);
        let fixed = fixed_header(&buf).unwrap().unwrap();
        let at = fixed.header_len + 2 + 2; // after the length, "a/"
        assert_eq!(buf[at], b'b');
        buf[at] = 0xff;
        let Frame::Publish(p) = Proto::V5.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(p.topic, "a/\u{fffd}");
        assert_eq!(p.payload, [1]);
    }

    #[test]
    fn v311_publish_and_acks() {
        let mut p = rumqttc::Publish::new("t/1", rumqttc::QoS::AtLeastOnce, vec![9u8; 300]);
        p.pkid = 300;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let fixed = fixed_header(&buf).unwrap().unwrap();
        assert_eq!(
            Proto::V311.publish_header_len(&fixed, &buf).unwrap(),
            Some(2 + 3 + 2)
        );
        let Frame::Publish(got) = Proto::V311.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!((got.pkid, got.payload.len()), (300, 300));
        let mut out = BytesMut::new();
        Proto::V311.puback(300, &mut out);
        assert_eq!(&out[..], &[0x40, 0x02, 0x01, 0x2c]);
    }

    #[test]
    fn connect_and_subscribe_encode() {
        let o = ConnectOptions {
            client_id: "weir".into(),
            keep_alive_s: 30,
            session_expiry_s: 60,
            receive_maximum: 100,
            login: Some(("u".into(), crate::config::Secret::new("p"))),
        };
        for proto in [Proto::V5, Proto::V311] {
            let mut out = BytesMut::new();
            proto.connect(&o, &mut out).unwrap();
            assert_eq!(out[0], 0x10);
            let mut out = BytesMut::new();
            proto
                .subscribe(
                    1,
                    &["a/#".into()],
                    (RetainHandling::NewSubscription, false),
                    &mut out,
                )
                .unwrap();
            assert_eq!(out[0], 0x82);
            // The subscription options' last byte: QoS 1, or QoS 2 when exactly once.
            assert_eq!(out[out.len() - 1] & 0b11, 1);
            let mut out = BytesMut::new();
            proto
                .subscribe(1, &["a/#".into()], (RetainHandling::Never, true), &mut out)
                .unwrap();
            assert_eq!(out[out.len() - 1] & 0b11, 2);
        }
    }

    #[test]
    fn the_qos_2_handshake_encodes_and_decodes() {
        for proto in [Proto::V5, Proto::V311] {
            let mut out = BytesMut::new();
            proto.pubrec(513, &mut out);
            proto.pubcomp(513, &mut out);
            assert_eq!(&out[..], &[0x50, 2, 2, 1, 0x70, 2, 2, 1]);
        }
        // PUBREL as the broker sends it (flags 0b0010), in its short form and in MQTT 5's
        // with a reason code.
        let mut buf = BytesMut::from(&[0x62, 0x02, 0x00, 0x09][..]);
        assert_eq!(Proto::V311.decode(&mut buf).unwrap(), Frame::PubRel(9));
        let mut buf = BytesMut::from(&[0x62, 0x02, 0x00, 0x09][..]);
        assert_eq!(Proto::V5.decode(&mut buf).unwrap(), Frame::PubRel(9));
        let mut buf = BytesMut::from(&[0x62, 0x03, 0x00, 0x0a, 0x92][..]);
        assert_eq!(Proto::V5.decode(&mut buf).unwrap(), Frame::PubRel(10));
    }
}
