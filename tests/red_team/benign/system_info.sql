-- Operating system: Linux
-- Database system: PostgreSQL 16
SELECT region, SUM(units * unit_price) AS revenue
FROM sales
WHERE unit_price IS NOT NULL
GROUP BY region
ORDER BY revenue DESC;
-- Assistant manager counts are in staff.csv
