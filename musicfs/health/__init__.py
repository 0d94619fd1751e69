"""Health of origins and of the cache: the daemon's monitor and the cron probe."""
from .monitor import DEGRADED, HEALTHY, UNHEALTHY, HealthMonitor, OriginHealth

__all__ = ["DEGRADED", "HEALTHY", "UNHEALTHY", "HealthMonitor", "OriginHealth"]
