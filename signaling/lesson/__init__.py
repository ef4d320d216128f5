"""A lesson's live state on this node: `live.Lesson` owns it (connections, router, stage, mute, hands, chat,
attendance, recording, sampling); `interaction` holds the pure rules it applies; `outcome` what a decision
returns for the caller to apply (events to send, media the SFU must forward)."""
