"""What people read: the report's sections and plots, the success criteria and the README's
results block."""
