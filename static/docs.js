// /docs: Swagger UI (vendored) on this server's OpenAPI schema. A file rather than an inline
// script, so the page runs under the app's own Content-Security-Policy.
(function () {
  "use strict";
  const { $ } = VR;
  const root = $("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null, // no badge image from a third party
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
