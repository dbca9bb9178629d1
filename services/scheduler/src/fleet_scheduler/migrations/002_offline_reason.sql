-- Why a phone is offline: heartbeats bring back only phones lost with their agent.
ALTER TABLE devices ADD COLUMN offline_reason text;
-- Report ids are pruned by age once REPORTS cannot deliver them again.
CREATE INDEX processed_reports_age ON processed_reports (recorded_at);
