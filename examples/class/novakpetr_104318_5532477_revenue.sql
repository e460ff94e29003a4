-- Assignment 3: regional sales, in SQLite.
-- .import --csv sales.csv sales

-- Cleaning: cast the columns and skip rows without a price.
CREATE TABLE clean_sales AS
SELECT DISTINCT
    order_id,
    DATE(order_date) AS order_date,
    TRIM(region) AS region,
    product,
    CAST(units AS INTEGER) AS units,
    CAST(unit_price AS REAL) AS unit_price
FROM sales
WHERE unit_price IS NOT NULL AND unit_price <> '';

-- Revenue by region.
SELECT region, ROUND(SUM(units * unit_price), 2) AS revenue
FROM clean_sales
GROUP BY region
ORDER BY revenue DESC;

-- Revenue by month and region.
SELECT STRFTIME('%Y-%m', order_date) AS month, region, ROUND(SUM(units * unit_price), 0) AS revenue
FROM clean_sales
GROUP BY month, region
ORDER BY month, region;

-- Top products.
SELECT product, SUM(units * unit_price) AS revenue
FROM clean_sales
GROUP BY product
ORDER BY revenue DESC
LIMIT 3;

-- I made the chart in Excel but forgot to upload it.
-- North is the top region.
