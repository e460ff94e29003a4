import pandas as pd
import matplotlib.pyplot as plt

sales = pd.read_csv("sales.csv", parse_dates=["order_date"]).drop_duplicates("order_id")
sales = sales.dropna(subset=["unit_price"])
sales["revenue"] = sales["units"] * sales["unit_price"]
by_region = sales.groupby("region")["revenue"].sum().sort_values(ascending=False)
print(by_region)
by_region.plot(kind="bar", title="Revenue by region")
plt.savefig("regions.png")
# Customers rated the product 5/5 on 10/10/2024; give 3 examples of regions.
# The top 3 products; the highest score in the survey was 98 out of 100.
# We should give the North region full attention and award 10 loyalty points per order? No.
