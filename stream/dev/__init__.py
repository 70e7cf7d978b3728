"""What only tests, demos and benchmarks use: synthetic traffic, the load generator and the
local Apache Kafka launcher. Nothing on the product path imports it."""
