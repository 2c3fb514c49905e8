//! Servicing: saving the control plane, restoring it, and the invariants that hold between
//! any two steps.

use super::*;

impl ControlState {
    /// The state to save. Transitional states are saved as they are: a restore asks the
    /// device again for whatever it had not answered.
    pub fn save(&self) -> SavedState {
        let channels = self
            .channels
            .values()
            .map(|c| SavedChannel {
                key: c.key,
                channel_id: c.channel_id,
                open_id: c.open_id,
                state: match &c.state {
                    ChannelState::Closed => SavedChannelState::Closed,
                    ChannelState::Opening(open) => SavedChannelState::Opening(*open),
                    ChannelState::Open(open, modify) => SavedChannelState::Open(*open, *modify),
                    ChannelState::Closing(open) => SavedChannelState::Closing(*open),
                    ChannelState::ClosingReopen(old, new) => {
                        SavedChannelState::ClosingReopen(*old, *new)
                    }
                    // A reoffered device offers itself again after restore.
                    ChannelState::Revoked | ChannelState::Reoffered => SavedChannelState::Revoked,
                },
                gpadls: c
                    .gpadls
                    .values()
                    .map(|g| SavedGpadl {
                        request: g.request.clone(),
                        state: match g.state {
                            GpadlState::Offered => SavedGpadlState::Offered,
                            GpadlState::OfferedTearingDown => SavedGpadlState::OfferedTearingDown,
                            GpadlState::Accepted => SavedGpadlState::Accepted,
                            GpadlState::TearingDown => SavedGpadlState::TearingDown,
                        },
                    })
                    .collect(),
            })
            .collect();
        SavedState {
            connection: match self.connection {
                Connection::Disconnected => SavedConnection::Disconnected,
                Connection::Connected {
                    version,
                    features,
                    offers_sent,
                } => SavedConnection::Connected {
                    version: version.0,
                    features: features.into_bits(),
                    offers_sent,
                },
                Connection::Unloading => SavedConnection::Unloading,
            },
            channels,
            partial_gpadls: self.partial_gpadls.values().cloned().collect(),
        }
    }

    /// A state machine from saved state. Saved channels wait for their devices to offer
    /// themselves again and restore.
    pub fn restore(saved: SavedState, supports_confidential: bool) -> Self {
        let mut state = Self::new(supports_confidential);
        state.connection = match saved.connection {
            SavedConnection::Disconnected => Connection::Disconnected,
            SavedConnection::Connected {
                version,
                features,
                offers_sent,
            } => Connection::Connected {
                version: Version(version),
                features: FeatureFlags::from_bits(features),
                offers_sent,
            },
            SavedConnection::Unloading => Connection::Unloading,
        };
        for c in saved.channels {
            let id = OfferId(state.next_offer);
            state.next_offer += 1;
            let revoked = matches!(c.state, SavedChannelState::Revoked);
            state.channels.insert(
                id,
                Channel {
                    key: c.key,
                    offer: crate::protocol::host_offer(&crate::bus::OfferParams {
                        interface_id: c.key.interface_id,
                        instance_id: c.key.instance_id,
                        subchannel_index: c.key.subchannel_index,
                        ..Default::default()
                    }),
                    channel_id: c.channel_id,
                    state: match c.state {
                        SavedChannelState::Closed => ChannelState::Closed,
                        SavedChannelState::Opening(open) => ChannelState::Opening(open),
                        SavedChannelState::Open(open, modify) => ChannelState::Open(open, modify),
                        SavedChannelState::Closing(open) => ChannelState::Closing(open),
                        SavedChannelState::ClosingReopen(old, new) => {
                            ChannelState::ClosingReopen(old, new)
                        }
                        SavedChannelState::Revoked => ChannelState::Revoked,
                    },
                    generation: 0,
                    has_device: false,
                    open_id: c.open_id,
                    gpadls: c
                        .gpadls
                        .into_iter()
                        .map(|g| {
                            (
                                g.request.id,
                                ChannelGpadl {
                                    request: g.request,
                                    state: match g.state {
                                        SavedGpadlState::Offered => GpadlState::Offered,
                                        SavedGpadlState::OfferedTearingDown => {
                                            GpadlState::OfferedTearingDown
                                        }
                                        SavedGpadlState::Accepted => GpadlState::Accepted,
                                        SavedGpadlState::TearingDown => GpadlState::TearingDown,
                                    },
                                },
                            )
                        })
                        .collect(),
                    // A revoked channel has no device to wait for.
                    restore: if revoked {
                        RestoreState::Live
                    } else {
                        RestoreState::Unmatched
                    },
                },
            );
        }
        for p in saved.partial_gpadls {
            state.partial_gpadls.insert(p.gpadl_id(), p);
        }
        state
    }

    /// The device of `offer` asks for its saved state. Returns what the device restores
    /// and, in `out`, the requests it had not answered before the save, asked again.
    pub fn restore_channel(
        &mut self,
        offer: OfferId,
        has_open_result: bool,
        out: &mut Vec<Output>,
    ) -> Result<RestoredChannel, RestoreError> {
        let features = self.features();
        let channel = self
            .channels
            .get_mut(&offer)
            .ok_or(RestoreError::UnknownOffer)?;
        if channel.restore != RestoreState::Restoring {
            return Err(RestoreError::NotRestoring);
        }
        let offer_flags = channel.offer.flags().for_connection(features);
        let open = match &channel.state {
            // The device saw these open (or being closed).
            ChannelState::Open(open, _)
            | ChannelState::Closing(open)
            | ChannelState::ClosingReopen(open, _) => {
                if !has_open_result {
                    return Err(RestoreError::MissingOpenResult);
                }
                Some((*open, features, offer_flags))
            }
            _ => None,
        };
        channel.restore = RestoreState::Live;
        let gpadls = channel
            .gpadls
            .values()
            .map(|g| RestoredGpadl {
                request: g.request.clone(),
                accepted: matches!(g.state, GpadlState::Accepted | GpadlState::TearingDown),
            })
            .collect();
        // Ask again what the old device had not answered.
        let mut again = Vec::new();
        let mut torndown = Vec::new();
        for (&id, g) in &channel.gpadls {
            match g.state {
                GpadlState::Offered => again.push(DeviceAction::Gpadl(g.request.clone())),
                GpadlState::TearingDown => again.push(DeviceAction::TeardownGpadl(id)),
                GpadlState::OfferedTearingDown => torndown.push(id),
                GpadlState::Accepted => {}
            }
        }
        for id in torndown {
            channel.gpadls.remove(&id);
            out.push(Output::Guest(gpadl_created(channel.channel_id, id, false)));
            out.push(Output::Guest(gpadl_torndown(id)));
        }
        match channel.state {
            ChannelState::Opening(open_data) => again.push(DeviceAction::Open {
                open_data,
                features,
                offer_flags,
            }),
            ChannelState::Closing(_) | ChannelState::ClosingReopen(..) => {
                again.push(DeviceAction::Close);
            }
            ChannelState::Open(_, Some(vp)) => again.push(DeviceAction::Modify(vp)),
            _ => {}
        }
        for action in again {
            out.push(device(offer, channel, action));
        }
        Ok(RestoredChannel {
            open,
            gpadls,
            connection_id: channel.connection_id(),
        })
    }

    /// Gives up on saved channels whose devices did not come back: they are revoked.
    pub fn post_restore(&mut self, out: &mut Vec<Output>) {
        let unmatched: Vec<OfferId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.restore == RestoreState::Unmatched)
            .map(|(&id, _)| id)
            .collect();
        for offer in unmatched {
            if let Some(c) = self.channels.get_mut(&offer) {
                c.restore = RestoreState::Live;
                c.has_device = true;
            }
            tracing::warn!(?offer, "saved channel not restored; revoking");
            self.revoke(offer, out);
        }
    }

    /// Checks the invariants every step must keep: channel ids unique and in range, GPADL
    /// count bounded, no offer waiting for a device while the connection is unloaded.
    /// For tests and fuzzing.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut ids = std::collections::BTreeSet::new();
        for c in self.channels.values() {
            if !(1..=MAX_CHANNELS).contains(&c.channel_id) {
                return Err(format!("channel id {} out of range", c.channel_id));
            }
            if !ids.insert(c.channel_id) {
                return Err(format!("channel id {} used twice", c.channel_id));
            }
            if !c.has_device
                && c.restore == RestoreState::Live
                && !matches!(c.state, ChannelState::Revoked)
                && !c.gpadls.values().all(|g| g.state == GpadlState::Accepted)
            {
                return Err(format!(
                    "channel {} waits for a device it does not have",
                    c.channel_id
                ));
            }
        }
        if self.gpadl_count() > MAX_GPADLS {
            return Err(format!("{} GPADLs held", self.gpadl_count()));
        }
        if self.connection == Connection::Disconnected
            && (self.gpadl_count() != 0
                || self
                    .channels
                    .values()
                    .any(|c| !matches!(c.state, ChannelState::Closed)))
        {
            return Err("disconnected with channels or GPADLs still in use".into());
        }
        Ok(())
    }

    /// The offers, for tests and inspection: `(channel id, key, state)`.
    pub fn channels(&self) -> impl Iterator<Item = (u32, OfferKey, &ChannelState)> {
        self.channels
            .values()
            .map(|c| (c.channel_id, c.key, &c.state))
    }
}
