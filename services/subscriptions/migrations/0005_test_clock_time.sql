-- The time of a customer's test clock, as last moved through the API: access
-- (grace periods, trials) is judged at the clock's time for such a customer.
ALTER TABLE customers ADD COLUMN test_clock_time timestamptz;
