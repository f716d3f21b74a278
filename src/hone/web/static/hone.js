// hone dashboard: every state change a script makes carries the session's CSRF token.
(function () {
  "use strict";
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  // htmx requests (partial updates) send the token as the API expects it.
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });
  // fetch() for the /v1 API with the session cookie and CSRF token; pages use it for streaming replies.
  window.hone = {
    csrfToken: csrfToken,
    api: function (path, options) {
      options = options || {};
      var headers = Object.assign({"X-CSRF-Token": csrfToken()}, options.headers || {});
      if (options.json !== undefined) {
        headers["Content-Type"] = "application/json";
        options.body = JSON.stringify(options.json);
      }
      return fetch(path, Object.assign({}, options, {headers: headers, credentials: "same-origin"}));
    },
  };
})();
