"""Running landcover models in other tools: ArcGIS Pro / Image Server (:mod:`.arcgis_pro`) and QGIS (:mod:`.qgis`)."""
