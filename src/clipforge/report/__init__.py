"""Tables and plots (matplotlib, Agg backend) read from the files runs write."""
