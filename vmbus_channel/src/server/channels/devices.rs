//! The device side of the control plane: offers, revokes, and the devices' answers.

use super::*;

impl ControlState {
    /// A device offers a channel. Returns its id and the device generation its answers carry.
    pub fn offer(
        &mut self,
        key: OfferKey,
        offer: HostOffer,
        out: &mut Vec<Output>,
    ) -> Result<(OfferId, u64), OfferError> {
        let generation = self.next_generation;
        let existing = self
            .channels
            .iter_mut()
            .find(|(_, c)| c.key == key)
            .map(|(&id, c)| (id, c));
        if let Some((id, channel)) = existing {
            match (&channel.state, channel.restore, channel.has_device) {
                // The saved channel's device is back; it restores next.
                (_, RestoreState::Unmatched, _) => {
                    channel.restore = RestoreState::Restoring;
                }
                (ChannelState::Revoked, _, false) => {
                    channel.state = channel
                        .transition(Event::Reoffer)
                        .map_err(|_| OfferError::Duplicate(key))?;
                }
                _ => return Err(OfferError::Duplicate(key)),
            }
            self.next_generation += 1;
            channel.generation = generation;
            channel.has_device = true;
            channel.offer = offer;
            return Ok((id, generation));
        }
        let channel_id = self.free_channel_id().ok_or(OfferError::TooManyChannels)?;
        let id = OfferId(self.next_offer);
        self.next_offer += 1;
        self.next_generation += 1;
        let channel = Channel {
            key,
            offer,
            channel_id,
            state: ChannelState::Closed,
            generation,
            has_device: true,
            open_id: 0,
            gpadls: BTreeMap::new(),
            restore: RestoreState::Live,
        };
        if self.offers_sent() {
            out.push(Output::Guest(self.offer_message(&channel)));
        }
        self.channels.insert(id, channel);
        Ok((id, generation))
    }

    /// The device of `offer` withdrew it (explicit revoke or its handle was dropped).
    pub fn revoke(&mut self, offer: OfferId, out: &mut Vec<Output>) {
        let offers_sent = self.offers_sent();
        let unloading = self.connection == Connection::Unloading;
        let Some(channel) = self.channels.get_mut(&offer) else {
            return;
        };
        channel.has_device = false;
        channel.restore = RestoreState::Live;
        let old = channel.state.clone();
        let Ok(next) = channel.transition(Event::Revoke) else {
            tracing::debug!(?offer, "revoke of a channel already revoked");
            return;
        };
        tracing::info!(channel_id = channel.channel_id, key = %channel.key, "revoked");
        channel.state = next;
        // The device is gone: whatever it had not answered is answered here (not to a guest
        // that is unloading: it waits for UNLOAD_COMPLETE only).
        let mut guest_out = Vec::new();
        match old {
            ChannelState::Opening(_) => {
                guest_out.push(open_result(channel.channel_id, channel.open_id, false));
            }
            ChannelState::Open(..) | ChannelState::Closing(_) => {
                out.push(Output::ClearHostEvent(channel.connection_id()));
            }
            ChannelState::ClosingReopen(..) => {
                out.push(Output::ClearHostEvent(channel.connection_id()));
                guest_out.push(open_result(channel.channel_id, channel.open_id, false));
            }
            _ => {}
        }
        let channel_id = channel.channel_id;
        let mut torndown = Vec::new();
        channel.gpadls.retain(|&id, g| match g.state {
            GpadlState::Offered => {
                guest_out.push(gpadl_created(channel_id, id, false));
                false
            }
            GpadlState::OfferedTearingDown | GpadlState::TearingDown => {
                torndown.push(id);
                false
            }
            GpadlState::Accepted => true,
        });
        guest_out.extend(torndown.into_iter().map(gpadl_torndown));
        if !unloading {
            out.extend(guest_out.into_iter().map(Output::Guest));
        }
        if offers_sent && !unloading {
            out.push(Output::Guest(
                Message::RescindChannelOffer(ChannelIdBody {
                    channel_id: channel_id.into(),
                })
                .encode(),
            ));
        } else if !unloading {
            // The guest never saw it: nothing to release.
            self.channels.remove(&offer);
        }
        self.check_unload_done(out);
    }

    /// A device answered a request. Answers from a replaced device are ignored.
    pub fn device_done(
        &mut self,
        offer: OfferId,
        generation: u64,
        result: DeviceResult,
        out: &mut Vec<Output>,
    ) {
        let unloading = self.connection == Connection::Unloading;
        let version = match self.connection {
            Connection::Connected { version, .. } => Some(version),
            _ => None,
        };
        let version_features = self.features();
        let Some(channel) = self
            .channels
            .get_mut(&offer)
            .filter(|c| c.generation == generation && c.has_device)
        else {
            tracing::debug!(?offer, ?result, "answer from a device that is gone");
            if let DeviceResult::Opened(true) = result {
                // Nothing will route to it; the runner drops the route it made.
                if let Some(c) = self.channels.get(&offer) {
                    out.push(Output::ClearHostEvent(c.connection_id()));
                }
            }
            return;
        };
        let channel_id = channel.channel_id;
        match result {
            DeviceResult::Opened(ok) => {
                let ChannelState::Opening(open) = channel.state else {
                    tracing::warn!(channel_id, "open result in the wrong state");
                    return;
                };
                if let Ok(next) = channel.transition(Event::DeviceOpened(ok)) {
                    channel.state = next;
                }
                if unloading {
                    // The guest left meanwhile: close again.
                    if ok {
                        channel.state = ChannelState::Closing(open);
                        out.push(device(offer, channel, DeviceAction::Close));
                    }
                } else {
                    out.push(Output::Guest(open_result(channel_id, channel.open_id, ok)));
                }
            }
            DeviceResult::Closed => match channel.transition(Event::DeviceClosed) {
                Ok(next) => {
                    channel.state = next;
                    out.push(Output::ClearHostEvent(channel.connection_id()));
                    if let ChannelState::Opening(open_data) = channel.state {
                        if unloading {
                            channel.state = ChannelState::Closed;
                        } else {
                            let open = channel.open_action(open_data, version_features);
                            out.push(device(offer, channel, open));
                        }
                    }
                }
                Err(e) => tracing::warn!(channel_id, error = %e, "unexpected close result"),
            },
            DeviceResult::Modified(status) => {
                let next = if status == control::STATUS_SUCCESS {
                    channel.transition(Event::DeviceModified)
                } else {
                    // Failed: stay on the old VP.
                    match &channel.state {
                        ChannelState::Open(open, Some(_)) => Ok(ChannelState::Open(*open, None)),
                        _ => channel.transition(Event::DeviceModified),
                    }
                };
                match next {
                    Ok(next) => {
                        channel.state = next;
                        if !unloading && version.is_some_and(|v| v >= Version::IRON) {
                            out.push(Output::Guest(
                                Message::ModifyChannelResponse(control::ModifyChannelResponse {
                                    channel_id: channel_id.into(),
                                    status: status.into(),
                                })
                                .encode(),
                            ));
                        }
                    }
                    Err(e) => tracing::warn!(channel_id, error = %e, "unexpected modify result"),
                }
            }
            DeviceResult::GpadlCreated(id, accepted) => {
                let Some(gpadl) = channel.gpadls.get_mut(&id) else {
                    return;
                };
                match (&gpadl.state, accepted) {
                    (GpadlState::Offered, true) if !unloading => {
                        gpadl.state = GpadlState::Accepted;
                        out.push(Output::Guest(gpadl_created(channel_id, id, true)));
                    }
                    (GpadlState::Offered, false) => {
                        channel.gpadls.remove(&id);
                        if !unloading {
                            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
                        }
                    }
                    // Torn down (or unloading) before the device answered: release it now.
                    (GpadlState::Offered | GpadlState::OfferedTearingDown, true) => {
                        gpadl.state = GpadlState::TearingDown;
                        out.push(device(offer, channel, DeviceAction::TeardownGpadl(id)));
                    }
                    (GpadlState::OfferedTearingDown, false) => {
                        channel.gpadls.remove(&id);
                        if !unloading {
                            out.push(Output::Guest(gpadl_created(channel_id, id, false)));
                            out.push(Output::Guest(gpadl_torndown(id)));
                        }
                    }
                    (state, _) => {
                        tracing::warn!(channel_id, %id, ?state, "unexpected GPADL result");
                    }
                }
            }
            DeviceResult::GpadlTornDown(id) => {
                if channel
                    .gpadls
                    .get(&id)
                    .is_some_and(|g| g.state == GpadlState::TearingDown)
                {
                    channel.gpadls.remove(&id);
                    if !unloading {
                        out.push(Output::Guest(gpadl_torndown(id)));
                    }
                }
            }
        }
        self.check_unload_done(out);
    }
}
