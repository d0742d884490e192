// rick.js: on www.youtube.com, one video only. Every request is answered
// with a redirect to that video's watch page, unless it is the request for
// that video, or comes from its page (the player's scripts, thumbnails and
// API calls carry the watch page as their Referer).
//
// A CloudFront viewer-request function: runs unmodified on CloudFront
// (cloudfront-js-1.0 or 2.0) and in flowdog's cloudfront_functions.
var VIDEO = 'dQw4w9WgXcQ';
var WATCH = 'https://www.youtube.com/watch?v=' + VIDEO;

function handler(event) {
    var request = event.request;
    var host = request.headers.host ? request.headers.host.value : '';
    if (host !== 'www.youtube.com') {
        return request;
    }
    var v = request.querystring.v;
    if (request.uri === '/watch' && v && v.value === VIDEO) {
        return request;
    }
    var referer = request.headers.referer ? request.headers.referer.value : '';
    if (referer.indexOf(WATCH) === 0) {
        return request;
    }
    return {
        statusCode: 302,
        statusDescription: 'Found',
        headers: {
            location: { value: WATCH },
            'cache-control': { value: 'no-store' }
        }
    };
}
