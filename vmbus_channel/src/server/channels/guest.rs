//! The guest side of the control plane: every message the guest sends, each valid in the
//! current state or refused.

use super::*;

impl ControlState {
    /// Handles one message from the guest. Malformed or out-of-place messages are refused;
    /// the state stays consistent whatever arrives.
    pub fn handle_guest_message(&mut self, bytes: &[u8], out: &mut Vec<Output>) {
        let message = match Message::parse(bytes) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "malformed control message dropped");
                return;
            }
        };
        let message_type = message.message_type();
        if let Err(reason) = self.dispatch(message, out) {
            tracing::warn!(?message_type, reason, "control message refused");
        }
    }

    fn dispatch(
        &mut self,
        message: Message<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        match (self.connection, message) {
            (Connection::Disconnected, Message::InitiateContact(c)) => {
                self.initiate_contact(c, None, out);
            }
            (Connection::Disconnected, Message::InitiateContact2(c)) => {
                self.initiate_contact(c.base, Some(c.client_id), out);
            }
            (Connection::Connected { .. } | Connection::Unloading, Message::InitiateContact(_))
            | (
                Connection::Connected { .. } | Connection::Unloading,
                Message::InitiateContact2(_),
            ) => {
                // A second contact without UNLOAD: refuse, keep the connection as it is.
                out.push(Output::Guest(version_response(None, FeatureFlags::new())));
                return Err("already connected");
            }
            (Connection::Connected { .. }, Message::Unload) => self.unload(out),
            (Connection::Disconnected, Message::Unload) => {
                // Unloading twice (or before contact) is harmless; say it is done.
                out.push(Output::Guest(Message::UnloadComplete.encode()));
            }
            (
                Connection::Connected {
                    version,
                    features,
                    offers_sent,
                },
                m,
            ) => {
                return self.connected_message(version, features, offers_sent, m, out);
            }
            (Connection::Disconnected | Connection::Unloading, _) => {
                return Err("not connected");
            }
        }
        Ok(())
    }

    fn initiate_contact(
        &mut self,
        contact: control::InitiateContact,
        _client_id: Option<[u8; 16]>,
        out: &mut Vec<Output>,
    ) {
        let version = Version(contact.version_requested.get());
        if !version.is_supported() {
            tracing::info!(?version, "unsupported version requested");
            out.push(Output::Guest(version_response(None, FeatureFlags::new())));
            return;
        }
        let features = if version.has_feature_flags() {
            let info = control::TargetInfo::from_bits(contact.interrupt_page_or_target_info.get());
            let mut supported = FeatureFlags::all();
            // Only a host with private memory can give confidential channels.
            supported.set_confidential_channels(self.supports_confidential);
            // Monitor pages are not implemented, so nothing here needs them; the flags
            // granted are those asked for that this server implements.
            FeatureFlags::from_bits(info.feature_flags() & supported.into_bits())
        } else {
            FeatureFlags::new()
        };
        self.connection = Connection::Connected {
            version,
            features,
            offers_sent: false,
        };
        tracing::info!(?version, features = features.into_bits(), "guest connected");
        out.push(Output::Guest(version_response(Some(version), features)));
    }

    fn connected_message(
        &mut self,
        version: Version,
        features: FeatureFlags,
        offers_sent: bool,
        message: Message<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        match message {
            Message::RequestOffers => {
                if offers_sent {
                    return Err("offers already sent");
                }
                self.connection = Connection::Connected {
                    version,
                    features,
                    offers_sent: true,
                };
                let mut order: Vec<&Channel> = self
                    .channels
                    .values()
                    .filter(|c| matches!(c.state, ChannelState::Closed))
                    .collect();
                order.sort_by_key(|c| (c.offer.sort_key(), c.key.subchannel_index));
                for c in order {
                    out.push(Output::Guest(self.offer_message(c)));
                }
                out.push(Output::Guest(Message::AllOffersDelivered.encode()));
            }
            Message::GpadlHeader(header, words) => self.gpadl_header(&header, words, out)?,
            Message::GpadlBody(body, words) => self.gpadl_body(&body, words, out)?,
            Message::GpadlTeardown(t) => {
                self.gpadl_teardown(t.channel_id.get(), GpadlId(t.gpadl_id.get()), out)?;
            }
            Message::OpenChannel(open) => self.open_channel(open, None, features, out)?,
            Message::OpenChannel2(open) => {
                let signal = features
                    .guest_specified_signal_parameters()
                    .then_some((open.connection_id.get(), open.event_flag.get()));
                self.open_channel(open.base, signal, features, out)?;
            }
            Message::CloseChannel(close) => self.close_channel(close.channel_id.get(), out)?,
            Message::ModifyChannel(modify) => {
                if version < Version::WIN10_RS3_0 {
                    return Err("modify needs version 4.1");
                }
                self.modify_channel(modify.channel_id.get(), modify.target_vp.get(), out)?;
            }
            Message::RelIdReleased(released) => self.release(released.channel_id.get(), out)?,
            Message::TlConnectRequest(r) => out.push(tl_refused(r)),
            Message::TlConnectRequest2(r) => out.push(tl_refused(r.base)),
            _ => return Err("not a guest message"),
        }
        Ok(())
    }

    fn gpadl_header(
        &mut self,
        header: &control::GpadlHeader,
        words: &[zerocopy::little_endian::U64],
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let channel_id = header.channel_id.get();
        let id = GpadlId(header.gpadl_id.get());
        let too_many = self.gpadl_count() >= MAX_GPADLS;
        let partial_dup = self.partial_gpadls.contains_key(&id);
        let Some((_, channel)) = self.by_channel_id(channel_id) else {
            return Err("GPADL for an unknown channel");
        };
        if matches!(
            channel.state,
            ChannelState::Revoked | ChannelState::Reoffered
        ) {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("GPADL for a revoked channel");
        }
        if partial_dup || channel.gpadls.contains_key(&id) {
            // The existing GPADL is untouched; only the newcomer fails.
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("duplicate GPADL id");
        }
        if too_many {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return Err("too many GPADLs");
        }
        match PartialGpadl::start(header, words) {
            Ok(Assembly::Incomplete(partial)) => {
                self.partial_gpadls.insert(id, partial);
            }
            Ok(Assembly::Complete(channel_id, request)) => {
                self.gpadl_complete(channel_id, request, out);
            }
            Err(err) => {
                tracing::warn!(channel_id, %id, error = %err, "bad GPADL header");
                out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            }
        }
        Ok(())
    }

    fn gpadl_body(
        &mut self,
        body: &control::GpadlBody,
        words: &[zerocopy::little_endian::U64],
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let id = GpadlId(body.gpadl_id.get());
        let partial = self
            .partial_gpadls
            .remove(&id)
            .ok_or("GPADL body without a header")?;
        let channel_id = partial.channel_id();
        match partial.add_body(words) {
            Ok(Assembly::Incomplete(partial)) => {
                self.partial_gpadls.insert(id, partial);
            }
            Ok(Assembly::Complete(channel_id, request)) => {
                self.gpadl_complete(channel_id, request, out);
            }
            Err(err) => {
                tracing::warn!(channel_id, %id, error = %err, "bad GPADL body");
                out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            }
        }
        Ok(())
    }

    fn gpadl_complete(&mut self, channel_id: u32, request: GpadlRequest, out: &mut Vec<Output>) {
        let id = request.id;
        // The channel may have been revoked while the bodies were coming.
        let Some((offer, channel)) = self
            .by_channel_id(channel_id)
            .filter(|(_, c)| c.has_device && !matches!(c.state, ChannelState::Revoked))
        else {
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return;
        };
        // Structure (range counts and lengths) is checked here; the device checks the
        // pages against the memory it will use.
        if let Err(err) = Gpadl::parse(&request) {
            tracing::warn!(channel_id, %id, error = %err, "malformed GPADL");
            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
            return;
        }
        channel.gpadls.insert(
            id,
            ChannelGpadl {
                request: request.clone(),
                state: GpadlState::Offered,
            },
        );
        out.push(device(offer, channel, DeviceAction::Gpadl(request)));
    }

    fn gpadl_teardown(
        &mut self,
        channel_id: u32,
        id: GpadlId,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        if self
            .partial_gpadls
            .get(&id)
            .is_some_and(|p| p.channel_id() == channel_id)
        {
            // Never completed: nothing reached the device.
            self.partial_gpadls.remove(&id);
            out.push(Output::Guest(gpadl_torndown(id)));
            return Ok(());
        }
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("teardown on an unknown channel")?;
        let has_device = channel.gpadls_have_device();
        let gpadl = channel
            .gpadls
            .get_mut(&id)
            .ok_or("teardown of an unknown GPADL")?;
        match gpadl.state {
            GpadlState::Accepted if has_device => {
                gpadl.state = GpadlState::TearingDown;
                out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
            }
            GpadlState::Accepted => {
                // No device (revoked): nothing holds it.
                channel.gpadls.remove(&id);
                out.push(Output::Guest(gpadl_torndown(id)));
            }
            GpadlState::Offered => gpadl.state = GpadlState::OfferedTearingDown,
            GpadlState::OfferedTearingDown | GpadlState::TearingDown => {
                return Err("GPADL already being torn down");
            }
        }
        Ok(())
    }

    fn open_channel(
        &mut self,
        open: control::OpenChannel,
        signal: Option<(u32, u16)>,
        features: FeatureFlags,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let channel_id = open.channel_id.get();
        let gpadl_id = GpadlId(open.ring_buffer_gpadl_id.get());
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("open of an unknown channel")?;
        let (connection_id, event_flag) = signal.unwrap_or((
            channel.connection_id(),
            u16::try_from(channel_id).unwrap_or(u16::MAX),
        ));
        let open_data = OpenData {
            target_vp: open.target_vp.get(),
            ring_offset: open.downstream_ring_buffer_page_offset.get(),
            ring_gpadl_id: gpadl_id,
            event_flag,
            connection_id,
            user_data: open.user_data,
        };
        let open_id = open.open_id.get();
        let mut refuse = |reason| {
            out.push(Output::Guest(open_result(channel_id, open_id, false)));
            Err(reason)
        };
        if !channel
            .gpadls
            .get(&gpadl_id)
            .is_some_and(|g| g.state == GpadlState::Accepted)
        {
            return refuse("open with a GPADL that is not accepted");
        }
        let Ok(next) = channel.transition(Event::GuestOpen(open_data)) else {
            return refuse("open in the wrong state");
        };
        channel.state = next;
        channel.open_id = open_id;
        let open = channel.open_action(open_data, features);
        out.push(device(offer, channel, open));
        Ok(())
    }

    fn close_channel(
        &mut self,
        channel_id: u32,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("close of an unknown channel")?;
        let next = channel
            .transition(Event::GuestClose)
            .map_err(|_| "close in the wrong state")?;
        let was_revoked = channel.state == ChannelState::Revoked;
        channel.state = next;
        if !was_revoked {
            out.push(device(offer, channel, DeviceAction::Close));
        }
        Ok(())
    }

    fn modify_channel(
        &mut self,
        channel_id: u32,
        target_vp: u32,
        out: &mut Vec<Output>,
    ) -> Result<(), &'static str> {
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("modify of an unknown channel")?;
        match channel.transition(Event::Modify(target_vp)) {
            Ok(next) => {
                channel.state = next;
                out.push(device(offer, channel, DeviceAction::Modify(target_vp)));
                Ok(())
            }
            Err(_) => {
                out.push(Output::Guest(
                    Message::ModifyChannelResponse(control::ModifyChannelResponse {
                        channel_id: channel_id.into(),
                        status: control::STATUS_UNSUCCESSFUL.into(),
                    })
                    .encode(),
                ));
                Err("modify in the wrong state")
            }
        }
    }

    fn release(&mut self, channel_id: u32, out: &mut Vec<Output>) -> Result<(), &'static str> {
        let offers_sent = self.offers_sent();
        let (offer, channel) = self
            .by_channel_id(channel_id)
            .ok_or("release of an unknown channel")?;
        let reoffered = channel.state == ChannelState::Reoffered;
        let next = channel
            .transition(Event::GuestRelease)
            .map_err(|_| "release of a channel that is not revoked")?;
        if !reoffered {
            self.channels.remove(&offer);
            return Ok(());
        }
        // The device came back: offer it under a fresh channel id.
        let gpadls_left = !channel.gpadls.is_empty();
        channel.state = next;
        channel.gpadls.clear();
        if gpadls_left {
            tracing::debug!(channel_id, "GPADLs of a released channel dropped");
        }
        let Some(new_id) = self.free_channel_id_excluding(channel_id) else {
            return Err("no channel id for the reoffer");
        };
        if let Some(channel) = self.channels.get_mut(&offer) {
            channel.channel_id = new_id;
        }
        if let Some(channel) = self.channels.get(&offer).filter(|_| offers_sent) {
            out.push(Output::Guest(self.offer_message(channel)));
        }
        Ok(())
    }

    fn free_channel_id_excluding(&self, old: u32) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self
            .channels
            .values()
            .map(|c| c.channel_id)
            .filter(|&id| id != old)
            .collect();
        (1..=MAX_CHANNELS).find(|id| !used.contains(id) && *id != old)
    }

    fn unload(&mut self, out: &mut Vec<Output>) {
        tracing::info!("guest unloading");
        self.connection = Connection::Unloading;
        self.partial_gpadls.clear();
        let mut remove = Vec::new();
        for (&offer, channel) in &mut self.channels {
            let has_device = channel.gpadls_have_device();
            match &channel.state {
                ChannelState::Open(open, _) => {
                    channel.state = ChannelState::Closing(*open);
                    out.push(device(offer, channel, DeviceAction::Close));
                }
                // Closes once the device answers the open (see `device_done`).
                ChannelState::Opening(_) | ChannelState::Closing(_) | ChannelState::Closed => {}
                ChannelState::ClosingReopen(old, _) => channel.state = ChannelState::Closing(*old),
                ChannelState::Revoked => remove.push(offer),
                ChannelState::Reoffered => channel.state = ChannelState::Closed,
            }
            let mut teardowns = Vec::new();
            channel.gpadls.retain(|&id, g| match g.state {
                GpadlState::Accepted if has_device => {
                    g.state = GpadlState::TearingDown;
                    teardowns.push(id);
                    true
                }
                GpadlState::Offered => {
                    g.state = GpadlState::OfferedTearingDown;
                    true
                }
                GpadlState::OfferedTearingDown | GpadlState::TearingDown => true,
                GpadlState::Accepted => false,
            });
            for id in teardowns {
                out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
            }
        }
        for offer in remove {
            self.channels.remove(&offer);
        }
        self.check_unload_done(out);
    }

    pub(super) fn check_unload_done(&mut self, out: &mut Vec<Output>) {
        if self.connection != Connection::Unloading {
            return;
        }
        let busy = self.channels.values().any(|c| {
            matches!(
                c.state,
                ChannelState::Opening(_)
                    | ChannelState::Open(..)
                    | ChannelState::Closing(_)
                    | ChannelState::ClosingReopen(..)
            ) || !c.gpadls.is_empty()
        });
        if !busy {
            // Revoked channels the guest never released are gone with the connection; a
            // device that came back meanwhile is a plain offer for the next guest.
            self.channels
                .retain(|_, c| !matches!(c.state, ChannelState::Revoked));
            for c in self.channels.values_mut() {
                if c.state == ChannelState::Reoffered {
                    c.state = ChannelState::Closed;
                    c.gpadls.clear();
                }
            }
            self.connection = Connection::Disconnected;
            tracing::info!("guest unloaded");
            out.push(Output::Guest(Message::UnloadComplete.encode()));
        }
    }
}
