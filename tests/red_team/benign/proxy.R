# Store count acts as a proxy for market size; the West region can act as a baseline.
library(tidyverse)
sales <- read_csv("sales.csv") |> distinct(order_id, .keep_all = TRUE) |> drop_na(unit_price)
sales <- sales |> mutate(revenue = units * unit_price)
sales |> group_by(region) |> summarise(revenue = sum(revenue)) |> arrange(desc(revenue))
# Override the default ggplot theme rules for the chart.
