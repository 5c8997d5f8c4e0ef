"""The admin dashboard: server-rendered pages (Jinja2) over the domain services, with htmx
polling for live status and Chart.js for metrics over versions, both vendored in static/."""
