from twisted.application.service import ServiceMaker

trow = ServiceMaker("trow", "trow.tap", "OCI registry, pull-through cache and admission webhook", "trow")
