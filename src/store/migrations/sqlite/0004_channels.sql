-- A second channel (e-mail) with verified binding and an ordered fallback.

-- A member's verified address (NULL: none) and own channel order ("email,wecom"; NULL:
-- delivery.fallback).
ALTER TABLE members ADD COLUMN email TEXT;
ALTER TABLE members ADD COLUMN channels TEXT;

-- The channels a message still has to try, first = the one being tried now
-- ("wecom,email"); `deliver_all`: try every one of them whatever the outcome (channel=all)
-- rather than stopping at the first that delivers. `email_to`: a fixed address (the
-- verification mail, to the address being bound) instead of the member's bound one.
-- `channel` of a delivered message lists the channels that delivered it.
ALTER TABLE messages ADD COLUMN route TEXT NOT NULL DEFAULT 'wecom';
ALTER TABLE messages ADD COLUMN deliver_all BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN email_to TEXT;

-- Every attempt that did not end the message (retries, a channel given up on, and each
-- channel's own outcome for deliver_all): GET /messages/{id} shows them in order, followed
-- by the delivery itself.
CREATE TABLE attempts (
    message_id TEXT NOT NULL,
    at         BIGINT NOT NULL,
    channel    TEXT NOT NULL,
    outcome    TEXT NOT NULL,          -- retry | failed | delivered
    error      TEXT
);
CREATE INDEX attempts_by_message ON attempts (message_id, at);

-- Pending verification codes: one per member (a new request replaces it).
CREATE TABLE email_codes (
    userid        TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    code          TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts_left BIGINT NOT NULL
);

-- Verification mails requested, to cap them per member and per address.
CREATE TABLE email_requests (
    userid       TEXT NOT NULL,
    address      TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE INDEX email_requests_by_member ON email_requests (userid, requested_at);
CREATE INDEX email_requests_by_address ON email_requests (address, requested_at);

-- Only what reaches WeCom counts against the member limits (they are WeCom's limits). A
-- deliver_all message's WeCom send is counted by the writer when it happens.
DROP TRIGGER messages_count_send;
CREATE TRIGGER messages_count_send AFTER UPDATE OF status ON messages
    WHEN NEW.status = 'delivered' AND OLD.status = 'queued' AND NEW.via IS NULL
         AND NEW.deliver_all = 0 AND NEW.channel = 'wecom'
BEGIN
    INSERT INTO sends (userid, sent_at) VALUES (NEW.userid, NEW.delivered_at);
END;
