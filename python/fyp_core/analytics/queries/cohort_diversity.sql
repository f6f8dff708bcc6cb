-- Cohort diversity: users grouped by the ISO week (Monday, UTC) of their first impression, for
-- each cohort and week of age, the users active that week and the distinct topics per user-week.
-- Distinct counts cannot be reweighted: under firehose sampling they are a lower bound (exploration
-- impressions are never sampled and always count).
-- Parameters (DuckDB variables): root (log directory, required).
-- Standalone: duckdb -c "SET VARIABLE root = '/path/to/LOGDIR'" -c ".read cohort_diversity.sql"
WITH user_week AS (
    SELECT user_token, CAST(date_trunc('week', day) AS DATE) AS week,
           count(DISTINCT topic) AS topics, sum(w) AS impressions
    FROM imp
    GROUP BY ALL
),
cohorts AS (
    SELECT user_token, min(week) AS cohort FROM user_week GROUP BY user_token
)
SELECT CAST(cohort AS DATE) AS cohort_week,
       CAST(datediff('week', cohort, week) AS INTEGER) AS age_weeks,
       count(*) AS users,
       avg(topics) AS mean_topics,
       quantile_cont(topics, 0.5) AS median_topics,
       avg(impressions) AS impressions_per_user
FROM user_week
JOIN cohorts USING (user_token)
GROUP BY ALL
ORDER BY cohort_week, age_weeks;
