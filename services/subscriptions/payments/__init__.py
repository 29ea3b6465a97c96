"""One-time payments for bookings, and refunds and disputes of every charge.

A member pays a cart of bookings (meeting-room hours, day passes, credit
packs) by card, through a PaymentIntent or a hosted Checkout session. The
amount is computed here from the catalog, never taken from the client; a
booking is charged at most once (the database enforces it); a payment's state
is what Stripe's events said. Refunds are staff actions, for bookings and for
subscription invoices alike. See the README's "Payments" section.
"""
