import pandas as pd

df = pd.read_csv("sales.csv")
print(df.head())

df["revenue"] = df["units"] * df["unit_price"]
print("total revenue:", df["revenue"].sum())

# ran out of time, will finish the rest later
