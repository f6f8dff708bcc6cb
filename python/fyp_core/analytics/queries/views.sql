-- The views every analytics query reads (one source: the engines create them once per connection
-- or session, the standalone files in sql/ inline them as common table expressions).
-- imp: impressions with w = 100 / sampled_pct (the sampling reweight, exploration rows have w = 1)
-- and day = the UTC date of ts, taken from the dt partition, time arithmetic uses epoch microseconds
-- (ts_us), which avoids per-row time-zone calendar work on TIMESTAMPTZ.
-- outcomes: each impression joined to its engagements by impression_key (the integer key of the
-- impression id, schema v2), a flag counts when its first engagement row arrives within
-- window_hours of the impression (default 24) (later rows are late engagements), watched_seconds
-- sums the impression's engagement rows when its first row is within the window.
-- view: imp
SELECT impression_id, impression_key, ts, epoch_us(ts) AS ts_us, dt, CAST(dt AS DATE) AS day,
       request_id, user_token, item_id, position, source, propensity, model_version, topic, creator_id,
       sampled_pct, 100.0 / sampled_pct AS w
FROM impressions
-- view: eng
SELECT impression_key,
       epoch_us(min(ts)) AS t_first,
       epoch_us(min(ts) FILTER (WHERE completed OR liked OR shared OR followed)) AS t_engaged,
       epoch_us(min(ts) FILTER (WHERE completed)) AS t_completed,
       epoch_us(min(ts) FILTER (WHERE liked)) AS t_liked,
       epoch_us(min(ts) FILTER (WHERE shared)) AS t_shared,
       epoch_us(min(ts) FILTER (WHERE followed)) AS t_followed,
       sum(watched_seconds) AS watched_seconds
FROM engagements
GROUP BY impression_key
-- view: outcomes
SELECT imp.*,
       coalesce(eng.t_engaged <= imp.ts_us + win.d, false) AS engaged,
       coalesce(eng.t_completed <= imp.ts_us + win.d, false) AS completed,
       coalesce(eng.t_liked <= imp.ts_us + win.d, false) AS liked,
       coalesce(eng.t_shared <= imp.ts_us + win.d, false) AS shared,
       coalesce(eng.t_followed <= imp.ts_us + win.d, false) AS followed,
       coalesce(eng.t_engaged > imp.ts_us + win.d, false) AS engaged_late,
       CASE WHEN eng.t_first <= imp.ts_us + win.d THEN eng.watched_seconds ELSE 0 END
           AS watched_seconds
FROM imp
LEFT JOIN eng USING (impression_key)
CROSS JOIN (SELECT CAST(coalesce(getvariable('window_hours'), 24) * 3600e6 AS BIGINT) AS d)
    AS win
