-- issue 20: a message with attachments is delivered part by part on a channel that sends
-- them separately (WeCom: the text, then one message per image or file). `media_count`:
-- how many attachments it has (`message_media` rows), so that plain messages need no
-- look-up; `parts_done`: how many of its parts the current channel (its route's first)
-- has delivered — a retry sends only what is left, never the text again. Back to 0 when
-- the message goes on to its next channel.
ALTER TABLE messages ADD COLUMN media_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN parts_done BIGINT NOT NULL DEFAULT 0;
